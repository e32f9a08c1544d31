"""The service: wires receive -> roll up -> price -> export and runs them on one loop.

GrpcReceiver --spans--> Rollup.add ... tick every tick_interval ... -> CostMetrics
                                                              MetricsServer scrapes it
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, disable_created_metrics

from costproc.clock import Clock, MonotonicClock
from costproc.config.model import Config
from costproc.errors import StartupError
from costproc.export.fanout import FanOut
from costproc.export.http import HealthServer, MetricsServer
from costproc.export.metrics import CostMetrics
from costproc.model import CostSink, SpanRecord
from costproc.price.book import PriceBook
from costproc.price.pricer import Pricer
from costproc.receive.decode import Decoder
from costproc.receive.grpc_server import GrpcReceiver
from costproc.rollup.rollup import Rollup

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class Service:
    """One costproc process: receivers, rollup, metrics and health endpoints."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        registry: CollectorRegistry | None = None,
        extra_sinks: Sequence[CostSink] = (),
    ):
        # `_created` series double every counter's series count and no query here uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.config = config
        self.clock = clock or MonotonicClock()
        self.wall_ns = wall_ns
        self.registry = registry if registry is not None else CollectorRegistry()
        self.book = PriceBook(config.pricing, config.usage.egress_default_class)
        self.metrics = CostMetrics(config.prometheus, config.pricing.currency, self.registry)
        sink: CostSink = FanOut([self.metrics, *extra_sinks]) if extra_sinks else self.metrics
        self.rollup = Rollup(config.rollup, Pricer(self.book), sink, self.clock)
        self.receiver = GrpcReceiver(
            config.grpc.endpoint,
            int(config.grpc.max_recv_msg_size_mib * MIB),
            Decoder(config, self.book),
            self.metrics,
            self._deliver,
        )
        self.metrics_server = MetricsServer(config.prometheus, self.registry)
        self.health_server = HealthServer(config.health, lambda: self._running)
        self._running = False
        self._stopped = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    def _deliver(self, spans: list[SpanRecord]) -> None:
        duplicates = self.rollup.add(spans)
        self.metrics.spans_dropped("duplicate", duplicates)
        if self.rollup.dropped_untagged:
            self.metrics.spans_dropped("untagged", self.rollup.dropped_untagged)
            self.rollup.dropped_untagged = 0

    async def start(self) -> None:
        """Bind every endpoint and start the rollup's clock; StartupError names a busy one."""
        config = self.config
        try:
            _bind("exporters.prometheus.endpoint", config.prometheus.endpoint, self.metrics_server.start)
            try:
                await self.receiver.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {config.grpc.endpoint} (receivers.otlp.grpc.endpoint): {exc}"
                ) from exc
            _bind("extensions.health_check.endpoint", config.health.endpoint, self.health_server.start)
        except StartupError:
            await self.receiver.stop(0)
            self.metrics_server.shutdown()
            raise
        self._update_price_table()
        self._running = True
        self._ticker = asyncio.create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        interval = self.config.rollup.tick_interval
        while True:
            await asyncio.sleep(interval)
            self.rollup.tick()
            self._update_price_table()

    def _update_price_table(self) -> None:
        table = self.book.table_at(self.wall_ns())
        self.metrics.price_table_in_force(table.version, self.book.currency)

    async def stop(self) -> None:
        """Stop intake, then close everything open so no accepted span goes unreported."""
        self._running = False
        await self.receiver.stop()
        if self._ticker is not None:
            self._ticker.cancel()
        self.rollup.flush()
        self.health_server.shutdown()
        self.metrics_server.shutdown()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _bind(key: str, endpoint: str, start: Callable[[], None]) -> None:
    try:
        start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {endpoint} ({key}): {exc.strerror or exc}") from exc
