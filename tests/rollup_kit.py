"""Build records and a rollup by hand, without protobuf: for rollup and pricing tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from costproc.clock import FakeClock
from costproc.config.model import (
    Config,
    PriceTable,
    PricingConfig,
    ResourcePrices,
    RollupConfig,
)
from costproc.export.memory import MemorySink
from costproc.model import Resource, SpanRecord
from costproc.price.book import PriceBook
from costproc.price.pricer import Pricer
from costproc.rollup.rollup import Rollup

MS = 1_000_000
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z

# Round prices so expected costs read plainly: $1 per core-second, $0.1 per GB-second,
# $10 per GPU-second, $1 per GB of internet egress.
TABLE = PriceTable(
    version="v1",
    effective_from_ns=0,
    prices=ResourcePrices(cpu_core_second=1.0, memory_gb_second=0.1, gpu_second=10.0),
    egress_per_gb={"internet": 1.0, "intra_region": 0.1},
)


def resource(
    service: str = "svc",
    instance: str | None = None,
    cpu: float = 1.0,
    memory: float = 0.0,
    gpu: float = 0.0,
    concurrency: float = 1.0,
    **labels: Any,
) -> Resource:
    return Resource(
        service=service,
        instance=f"{service}/{instance}" if instance else service,
        allocation=(cpu, memory, gpu),
        concurrency=concurrency,
        job_id=labels.get("job_id"),
        job_type=labels.get("job_type"),
        tenant=labels.get("tenant"),
    )


DEFAULT_RESOURCE = resource()


def span(
    trace: int,
    sid: int,
    parent: int | None,
    start_ms: float,
    end_ms: float,
    job: str | None = None,
    res: Resource = DEFAULT_RESOURCE,
    **kw: Any,
) -> SpanRecord:
    """A record in shorthand: small int ids, times in ms after T0."""
    return SpanRecord(
        trace.to_bytes(16, "big"),
        sid.to_bytes(8, "big"),
        parent.to_bytes(8, "big") if parent is not None else b"",
        T0 + int(start_ms * MS),
        T0 + int(end_ms * MS),
        res,
        kw.pop("table", "v1"),
        job_id=job,
        **kw,
    )


class Kit:
    """A rollup wired to a MemorySink and a FakeClock."""

    def __init__(self, tables: tuple[PriceTable, ...] = (TABLE,), **rollup: Any):
        base = RollupConfig(completion_wait=2.0, max_wait=60.0, late_span_window=30.0)
        self.config = replace(
            Config(), rollup=replace(base, **rollup), pricing=PricingConfig(tables=tables)
        )
        self.book = PriceBook(self.config.pricing, "internet")
        self.sink = MemorySink()
        self.clock = FakeClock(1000.0)
        self.rollup = Rollup(self.config.rollup, Pricer(self.book), self.sink, self.clock)

    def add(self, *spans: SpanRecord) -> None:
        self.rollup.add(list(spans))

    def wait(self, seconds: float) -> None:
        """Let time pass in small steps, ticking as the service does."""
        steps = max(1, int(seconds / 0.25))
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            self.rollup.tick()
