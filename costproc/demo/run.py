"""Running the demo: the service, the workload sent over OTLP/gRPC, the table on screen.

Workload.batches -> _Exporter (OTLP/gRPC Export) -> Service -> DemoTable -> _Demo._show
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import TextIO

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CollectorRegistry

from costproc.config.model import Config
from costproc.demo.table import DemoTable
from costproc.demo.workload import EXPORT_INTERVAL, SpanBatch, Workload, export_request
from costproc.errors import StartupError
from costproc.export import parse_endpoint
from costproc.service import Service

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# With retry_window 0 a retry in a new trace would finish as a second job. The demo's
# retries arrive about when their failed attempt closes (completion_wait after its last
# span), a second or so either way, so a few seconds lets them join their job.
DEMO_RETRY_WINDOW = 3.0

PORT_HINT = "free the port, or pass --config with another endpoint"

_SEND_TIMEOUT = 10.0
_CLEAR = "\x1b[H\x1b[2J"


def demo_config(config: Config) -> Config:
    """`config` with retry_window raised to DEMO_RETRY_WINDOW if it is 0."""
    if config.rollup.retry_window > 0:
        return config
    return replace(config, rollup=replace(config.rollup, retry_window=DEMO_RETRY_WINDOW))


class _Exporter:
    """Sends export requests over OTLP/gRPC, as an SDK's exporter does, and counts them."""

    def __init__(self, target: str):
        self._channel = grpc.aio.insecure_channel(target)
        # Generic call on bytes: serialized here, parsed by the service's own decoder.
        self._export = self._channel.unary_unary(
            EXPORT_METHOD, response_deserializer=ExportTraceServiceResponse.FromString
        )
        self.spans_sent = 0
        self.failed_requests = 0
        self.last_error = ""

    async def send(self, batch: SpanBatch) -> None:
        body = export_request(batch).SerializeToString()
        try:
            await self._export(body, timeout=_SEND_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.failed_requests += 1
            self.last_error = f"{exc.code().name}: {exc.details()}"
            return
        self.spans_sent += sum(len(spans) for spans in batch.values())

    async def close(self) -> None:
        await self._channel.close()


class _Demo:
    """Runs the service, the workload and the table until stopped."""

    def __init__(
        self, config: Config, raised_from: float | None, rate: float, seed: int, out: TextIO
    ):
        self.config = config
        self.raised_from = raised_from
        self.rate = max(0.0, rate)
        self.seed = seed
        self.out = out
        self.table = DemoTable()
        self.workload = Workload(seed)
        self.service = Service(config, extra_sinks=[self.table])
        self.metrics_url = ""
        self.started_at = 0.0

    async def run(self, duration: float | None, refresh: float) -> int:
        if not await self._start():
            return 1
        stop = asyncio.Event()
        assert self.config.grpc is not None, "run_demo checks for the gRPC receiver"
        host, _ = parse_endpoint(self.config.grpc.endpoint)
        exporter = _Exporter(_client_target(host, self.service.grpc_port))
        driver = asyncio.create_task(self._drive(exporter, stop))
        try:
            with _stop_on_signals(stop):
                await self._show_until(stop, duration, refresh, exporter)
        finally:
            stop.set()
            await driver
            await exporter.close()
            await self.service.stop()
            self._show(exporter, final=True)
        return 0

    async def _start(self) -> bool:
        try:
            await self.service.start()
        except StartupError as exc:  # the service has already closed what it had opened
            print(f"costproc demo: {exc}", file=sys.stderr)
            print(f"costproc demo: {PORT_HINT}", file=sys.stderr)
            return False
        self.metrics_url = f"http://localhost:{self.service.metrics_server.port}/metrics"
        self.started_at = asyncio.get_running_loop().time()
        return True

    async def _drive(self, exporter: _Exporter, stop: asyncio.Event) -> None:
        """Every EXPORT_INTERVAL, generate the jobs due at `rate` and send them."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        owed = self.rate * EXPORT_INTERVAL  # start as if the jobs had run for a round
        while not stop.is_set():
            jobs = int(owed)
            owed -= jobs
            for batch in self.workload.batches(jobs, time.time_ns()):
                await exporter.send(batch)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EXPORT_INTERVAL)
            now = loop.time()
            owed += self.rate * (now - last)
            last = now

    async def _show_until(
        self, stop: asyncio.Event, duration: float | None, refresh: float, exporter: _Exporter
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = math.inf if duration is None else loop.time() + duration
        while not stop.is_set():
            wait = min(refresh, deadline - loop.time())
            if wait <= 0:
                return
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if not stop.is_set():
                self._show(exporter)

    def _show(self, exporter: _Exporter, final: bool = False) -> None:
        lines = [*self._header(final), "", *self.table.render(), "", *self._footer(exporter)]
        # On a terminal each table replaces the last; elsewhere they follow one another.
        prefix = _CLEAR if self.out.isatty() else "\n"
        self.out.write(prefix + "\n".join(lines) + "\n")
        self.out.flush()

    def _header(self, final: bool) -> list[str]:
        elapsed = asyncio.get_running_loop().time() - self.started_at
        state = "final, open jobs flushed" if final else "live, Ctrl-C to stop"
        lines = [
            f"costproc demo: cost per job by job type ({state}; {elapsed:.0f}s, "
            f"{self.rate:g} jobs/s, seed {self.seed})",
            f"  success, p50/job, p95/job, $/success, retries: over each type's last "
            f"{self.table.window} jobs",
            "  $/success = cost / successful jobs; retries = attempts / jobs - 1; "
            "jobs, spend: since start",
        ]
        if self.raised_from is not None:
            lines.append(
                f"  rollup.retry_window raised from {self.raised_from:g}s to "
                f"{self.config.rollup.retry_window:g}s so a retry in a new trace joins its job"
            )
        return lines

    def _footer(self, exporter: _Exporter) -> list[str]:
        received, rejected = _intake(self.service.registry)
        lines = [
            f"spans: sent {exporter.spans_sent}, received {received}, rejected {rejected}, "
            f"late {self.table.late_spans_count}; jobs in flight {self.table.inflight}, "
            f"evicted {self.table.evicted}",
            f"metrics: {self.metrics_url}",
        ]
        if exporter.failed_requests:
            lines.append(
                f"export failures: {exporter.failed_requests} (last: {exporter.last_error})"
            )
        return lines


def _intake(registry: CollectorRegistry) -> tuple[int, int]:
    """Spans received and rejected, as the service's own counters have them."""
    received = rejected = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "costproc_spans_received_total":
                received += sample.value
            elif sample.name == "costproc_spans_rejected_total":
                rejected += sample.value
    return int(received), int(rejected)


def _client_target(host: str, port: int) -> str:
    """Where to reach the receiver: loopback when it listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set `stop`, so the demo shuts down cleanly instead of unwinding."""
    loop = asyncio.get_running_loop()
    # Signal handlers need the main thread and a Unix loop; elsewhere Ctrl-C raises
    # KeyboardInterrupt instead, which run_demo turns into a normal exit.
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_demo(
    config: Config,
    duration: float | None,
    rate: float,
    seed: int,
    out: TextIO | None = None,
    refresh: float = 1.0,
) -> int:
    """Run the service on the synthetic workload, printing the cost table every `refresh` s.

    Stops after `duration` seconds (None: on Ctrl-C), flushes open jobs, prints the final
    table to `out` (default: stdout) and returns 0; returns 1 when an endpoint cannot be
    bound.
    """
    stream = out if out is not None else sys.stdout
    if config.grpc is None:
        print(
            "costproc demo: the workload goes over OTLP/gRPC: configure receivers.otlp.grpc",
            file=stream,
        )
        return 1
    demo = demo_config(config)
    raised_from = config.rollup.retry_window if demo is not config else None
    # `stream` is looked up per call, so a replaced sys.stdout (tests) is honoured.

    async def main() -> int:
        return await _Demo(demo, raised_from, rate, seed, stream).run(duration, refresh)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        # Only where signal handlers cannot be installed; the final table is already out.
        return 0
