"""Shared fixtures: configs derived from the bundled default, and a Service on its own loop."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from costproc.clock import Clock
from costproc.config.load import default_config_path, parse_config
from costproc.config.model import Config
from costproc.service import Service

T = TypeVar("T")

# Every endpoint on a free local port; waits short enough for a test to see jobs close.
LOCAL_FAST: dict[str, Any] = {
    "receivers": {
        "otlp": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}
    },
    "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}},
    "extensions": {"health_check": {"endpoint": "127.0.0.1:0"}},
    "rollup": {"completion_wait": "300ms", "tick_interval": "50ms"},
}


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` merged in: mappings recursively, anything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class RunningService:
    """A started Service, its event loop thread, and ways to reach it from the test."""

    def __init__(self, config: Config, clock: Clock | None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        # grpc.aio binds its server to the loop it is created on: build it there.
        self.service: Service = self.run(self._start(config, clock))
        self.grpc_target = f"127.0.0.1:{self.service.grpc_port}"
        self.http_url = ""  # OTLP/HTTP traces URL, when that receiver is configured
        if config.http is not None:
            scheme = "https" if config.http.tls is not None else "http"
            self.http_url = f"{scheme}://127.0.0.1:{self.service.http_port}/v1/traces"
        self.metrics_url = f"http://127.0.0.1:{self.service.metrics_server.port}/metrics"

    @staticmethod
    async def _start(config: Config, clock: Clock | None) -> Service:
        service = Service(config, clock=clock)
        await service.start()
        return service

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def stop() -> None:
            await self.service.stop()
            await asyncio.sleep(0)  # let the cancelled ticker finish

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=15)
            self.loop.close()

    def scrape(self, accept: str | None = None) -> str:
        """GET /metrics over HTTP."""
        headers = {"Accept": accept} if accept else {}
        request = urllib.request.Request(self.metrics_url, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())

    def samples(self) -> list[Sample]:
        """Every sample of a text-format scrape."""
        families = text_string_to_metric_families(self.scrape())
        return [s for family in families for s in family.samples]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        return sum(
            s.value for s in self.samples() if s.name == name and labels.items() <= s.labels.items()
        )

    def wait_for_total(self, name: str, want: float, timeout: float = 10.0) -> None:
        """Poll until `total(name)` reaches `want`; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (got := self.total(name)) < want:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} stayed at {got}, wanted {want} within {timeout}s")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def make_config() -> Callable[[Mapping[str, Any]], Config]:
    """Build a Config: the bundled default, local port-0 endpoints, fast waits, an overlay."""
    bundled = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))

    def build(overlay: Mapping[str, Any]) -> Config:
        return parse_config(yaml.safe_dump(merge(merge(bundled, LOCAL_FAST), overlay)))

    return build


@pytest.fixture(scope="module")
def start_service() -> Iterator[Callable[..., RunningService]]:
    """Start Services on their own loop threads; all are stopped when the module is done."""
    started: list[RunningService] = []

    def start(config: Config, clock: Clock | None = None) -> RunningService:
        running = RunningService(config, clock)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.close()
