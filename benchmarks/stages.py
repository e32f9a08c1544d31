"""Per-stage cost of costproc in one process: decode, roll up, close (price + export).

    python benchmarks/stages.py [--requests 300] [--repeat 3]

Uses the same pre-serialized 512-span requests as throughput.py and reports µs per span
for each stage, next to a baseline measured in the same run: parsing the same bytes
with the same wire classes and reading every field and attribute costproc looks at,
with no work done on them (the floor for a Python decoder). The best of `--repeat`
runs is reported, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput

from costproc.clock import FakeClock
from costproc.config import parse_config
from costproc.config.model import Config
from costproc.export.metrics import CostMetrics
from costproc.price import PriceBook, Pricer
from costproc.receive.decode import Decoded, Decoder
from costproc.receive.wire import ExportRequest
from costproc.rollup import Rollup
from costproc.runtime import tune_gc

SPANS_PER_REQUEST = 512
# The keys decode looks up on a span (usage, egress, rule trigger, job id, labels).
LOOKUPS = ("a", "b", "c", "d", "e", "f", "g", "h", "i")


def bench_config() -> Config:
    """The config throughput.py gives a costproc server."""
    ports = {"grpc": 0, "http": 0, "metrics": 0, "health": 0}
    return parse_config(throughput.COSTPROC_CONFIG.format(**ports))


def floor(bodies: list[bytes]) -> None:
    """Parse and read every field costproc reads, keeping tuples, doing nothing else."""
    kept = []
    for body in bodies:
        request = ExportRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    get = s.attributes.get
                    kept.append(
                        (
                            s.trace_id,
                            s.span_id,
                            s.parent_span_id,
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            s.kind,
                            s.flags,
                            s.status.code,
                            *(get(k) for k in LOOKUPS),
                        )
                    )


def stages(config: Config, bodies: list[bytes]) -> tuple[float, float, float]:
    """Seconds spent decoding, adding to the rollup, and closing everything."""
    book = PriceBook(config.pricing, config.usage.egress_default_class)
    metrics = CostMetrics(config.prometheus, config.pricing.currency, CollectorRegistry())
    clock = FakeClock()
    rollup = Rollup(config.rollup, Pricer(book), metrics, clock)
    decoder = Decoder(config, book)
    started = time.perf_counter()
    decoded: list[Decoded] = [decoder.decode(body) for body in bodies]
    decoded_at = time.perf_counter()
    for batch in decoded:
        rollup.add(batch.spans)
    added_at = time.perf_counter()
    clock.advance(config.rollup.completion_wait + 1)
    rollup.tick()
    closed_at = time.perf_counter()
    return decoded_at - started, added_at - decoded_at, closed_at - added_at


def best(repeat: int, run: Callable[[], tuple[float, ...]]) -> tuple[float, ...]:
    results = [run() for _ in range(repeat)]
    return tuple(min(r[i] for r in results) for i in range(len(results[0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    workload = throughput.build_workload(8, SPANS_PER_REQUEST, args.seed)
    bodies = [workload.request(i) for i in range(args.requests)]
    spans = len(bodies) * SPANS_PER_REQUEST
    config = bench_config()
    tune_gc()  # as `costproc serve` does
    gc.collect()

    def timed_floor() -> tuple[float]:
        started = time.perf_counter()
        floor(bodies)
        return (time.perf_counter() - started,)

    (floor_s,) = best(args.repeat, timed_floor)
    decode_s, add_s, close_s = best(args.repeat, lambda: stages(config, bodies))
    per_span = {
        "floor: parse + read fields": floor_s,
        "decode": decode_s,
        "roll up (add)": add_s,
        "close: price + export": close_s,
    }
    print(f"{spans} spans in {len(bodies)} requests, best of {args.repeat}")
    for name, seconds in per_span.items():
        print(f"  {name:28s} {seconds / spans * 1e6:7.2f} µs/span")
    total = decode_s + add_s + close_s
    print(f"  {'all stages':28s} {total / spans * 1e6:7.2f} µs/span = {spans / total:,.0f} spans/s")
    print(f"  decode / floor: {decode_s / floor_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
