"""The service: wires receive -> roll up -> price -> export and runs them on one loop.

GrpcReceiver / HttpReceiver -> Intake -> Rollup.add ... tick every tick_interval
    ... -> CostSinks (CostMetrics, forwarder's cost spans, cost records)
MetricsServer serves CostMetrics' registry; HealthServer says whether we serve.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, disable_created_metrics

from costproc.clock import Clock, MonotonicClock
from costproc.config.model import Config, GrpcReceiverConfig, HttpReceiverConfig
from costproc.errors import StartupError
from costproc.export.fanout import FanOut
from costproc.export.forward import Forwarder
from costproc.export.http import HealthServer, MetricsServer
from costproc.export.metrics import CostMetrics
from costproc.export.records import CostRecordWriter
from costproc.model import CostSink
from costproc.price.book import PriceBook
from costproc.price.pricer import Pricer
from costproc.receive.decode import Decoder
from costproc.receive.grpc_server import GrpcReceiver
from costproc.receive.http_server import HttpReceiver
from costproc.receive.intake import Intake
from costproc.rollup.rollup import Rollup

log = logging.getLogger(__name__)
TICK_BUDGET = 200  # attempts closed per slice of the event loop (~10-40 ms of work)
FORWARD_DRAIN = 5.0  # seconds stop() gives queued requests and cost spans to go out


class Receiver(Protocol):
    """A protocol front end that hands request bodies to an `Intake`."""

    port: int

    @property
    def config(self) -> GrpcReceiverConfig | HttpReceiverConfig:
        """Its configuration (for the endpoint it binds)."""

    async def start(self) -> None:
        """Bind and serve; raise OSError when the endpoint cannot be bound."""

    async def stop(self, grace: float) -> None:
        """Stop taking requests; requests in progress get `grace` seconds."""


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
        currency = config.pricing.currency
        self.forwarder = (
            None if config.forward is None else Forwarder(config.forward, self.registry, currency)
        )
        self.records = (
            None
            if config.cost_records is None
            else CostRecordWriter(config.cost_records, currency, self.registry)
        )
        sinks: list[CostSink] = [self.metrics, *extra_sinks]
        if self.forwarder is not None and self.forwarder.config.cost_spans:
            sinks.append(self.forwarder)
        if self.records is not None:
            sinks.append(self.records)
        sink: CostSink = FanOut(sinks) if len(sinks) > 1 else self.metrics
        self.rollup = Rollup(config.rollup, Pricer(self.book), sink, self.clock)
        self.intake = Intake(
            Decoder(config, self.book), self.rollup, self.metrics, forwarder=self.forwarder
        )
        # (config key, receiver) for every configured protocol.
        self.receivers: list[tuple[str, Receiver]] = []
        if config.grpc is not None:
            grpc_receiver = GrpcReceiver(config.grpc, self.intake)
            self.receivers.append(("receivers.otlp.grpc.endpoint", grpc_receiver))
        if config.http is not None:
            http_receiver = HttpReceiver(config.http, self.intake)
            self.receivers.append(("receivers.otlp.http.endpoint", http_receiver))
        self.metrics_server = MetricsServer(config.prometheus, self.registry)
        self.health_server = HealthServer(config.health, lambda: self._running)
        self._running = False
        self._ticker: asyncio.Task[None] | None = None
        self._stops: list[Callable[[], Awaitable[None]]] = []

    @property
    def grpc_port(self) -> int:
        """The bound OTLP/gRPC port (after start)."""
        return self._port("receivers.otlp.grpc.endpoint")

    @property
    def http_port(self) -> int:
        """The bound OTLP/HTTP port (after start)."""
        return self._port("receivers.otlp.http.endpoint")

    def _port(self, key: str) -> int:
        for name, receiver in self.receivers:
            if name == key:
                return receiver.port
        raise LookupError(f"{key} is not configured")

    async def start(self) -> None:
        """Bind every endpoint and start the rollup's clock; StartupError names a busy one."""
        try:
            await self._bind(
                "exporters.prometheus.endpoint",
                self.config.prometheus.endpoint,
                _sync(self.metrics_server.start),
                _sync(self.metrics_server.shutdown),
            )
            if self.forwarder is not None:
                await self.forwarder.start()
                self._stops.append(functools.partial(self.forwarder.stop, 0.0))
            for key, receiver in self.receivers:
                await self._bind(
                    key, receiver.config.endpoint, receiver.start, _grace_zero(receiver)
                )
            await self._bind(
                "extensions.health_check.endpoint",
                self.config.health.endpoint,
                _sync(self.health_server.start),
                _sync(self.health_server.shutdown),
            )
        except StartupError:
            await self._unwind()
            raise
        self._update_price_table()
        self._running = True
        self._ticker = asyncio.create_task(self._tick_forever())

    async def _bind(
        self,
        key: str,
        endpoint: str,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            await start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {endpoint} ({key}): {exc}") from exc
        self._stops.append(stop)

    async def _unwind(self) -> None:
        while self._stops:
            await self._stops.pop()()

    async def _tick_forever(self) -> None:
        interval = self.config.rollup.tick_interval
        while True:
            await asyncio.sleep(interval)
            while self.rollup.tick(budget=TICK_BUDGET):
                await asyncio.sleep(0)  # let waiting requests in between slices
            self._update_price_table()

    def _update_price_table(self) -> None:
        table = self.book.table_at(self.wall_ns())
        self.metrics.price_table_in_force(table.version, self.book.currency)

    async def stop(self) -> None:
        """Stop intake, then close everything open so no accepted span goes unreported."""
        self._running = False
        for _, receiver in self.receivers:
            await receiver.stop(5.0)
        if self._ticker is not None:
            self._ticker.cancel()
        self.rollup.flush()
        # After the flush, so the jobs it closed get their cost spans and records.
        if self.forwarder is not None:
            await self.forwarder.stop(FORWARD_DRAIN)
        if self.records is not None:
            self.records.close()
        self.health_server.shutdown()
        self.metrics_server.shutdown()
        self._stops.clear()


def _sync(call: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        call()

    return run


def _grace_zero(receiver: Receiver) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        await receiver.stop(0)

    return stop
