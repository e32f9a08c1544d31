"""MetricsServer and HealthServer over real HTTP on port 0."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from costproc.config.model import HealthConfig, PrometheusConfig
from costproc.export import CostMetrics, HealthServer, MetricsServer, parse_endpoint
from costproc.model import Cost, JobResult, Labels

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:0", ("::1", 0)),
        ("[::]:13133", ("::", 13133)),
        (":9464", ("0.0.0.0", 9464)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    "endpoint", ["9464", "host:", "host:http", "::1:0", "host:65536", "host:-1", "host:٣"]
)
def test_parse_endpoint_refuses(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        parse_endpoint(endpoint)


@pytest.fixture
def metrics() -> CostMetrics:
    metrics = CostMetrics(PrometheusConfig(), registry=CollectorRegistry())
    cost = Cost(by_component={"cpu": 0.02}, cpu_seconds=1.0)
    metrics.job_closed(
        JobResult("j", Labels("etl", "acme", "batch"), "success", 1, cost, 3.0, TRACE)
    )
    return metrics


@pytest.fixture
def metrics_url(metrics: CostMetrics) -> Iterator[str]:
    server = MetricsServer(PrometheusConfig(endpoint="127.0.0.1:0"), metrics.registry)
    server.start()
    yield f"http://127.0.0.1:{server.port}/metrics"
    server.shutdown()


def test_openmetrics_carries_exemplar(metrics_url: str) -> None:
    status, headers, body = get(metrics_url, Accept=OPENMETRICS)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert f'# {{trace_id="{TRACE.hex()}"}} 0.02' in text
    families = {f.name: f for f in parse_openmetrics(text)}
    buckets = [s for s in families["costproc_job_cost_usd"].samples if s.exemplar]
    assert [s.exemplar.labels for s in buckets if s.exemplar] == [{"trace_id": TRACE.hex()}]


@pytest.mark.parametrize("accept", [None, "text/plain", "text/plain;version=0.0.4", "*/*"])
def test_classic_text_has_no_exemplar_and_parses(metrics_url: str, accept: str | None) -> None:
    status, headers, body = get(metrics_url, **({"Accept": accept} if accept else {}))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "trace_id" not in text
    families = {f.name: f for f in parse_text(text)}
    count = [s for s in families["costproc_job_cost_usd"].samples if s.name.endswith("_count")]
    assert [s.value for s in count] == [1.0]


def test_gzip_when_accepted(metrics_url: str) -> None:
    status, headers, body = get(metrics_url, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert b"costproc_jobs_total" in gzip.decompress(body)


def test_unknown_path_is_404(metrics_url: str) -> None:
    assert get(metrics_url.replace("/metrics", "/other"))[0] == 404


def test_query_string_is_ignored(metrics_url: str) -> None:
    assert get(metrics_url + "?name[]=costproc_jobs_total")[0] == 200


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_serves_on_ipv6(metrics: CostMetrics) -> None:
    server = MetricsServer(PrometheusConfig(endpoint="[::1]:0"), metrics.registry)
    server.start()
    try:
        assert get(f"http://[::1]:{server.port}/metrics")[0] == 200
    finally:
        server.shutdown()


def test_lifecycle(metrics: CostMetrics) -> None:
    server = MetricsServer(PrometheusConfig(endpoint="127.0.0.1:0"), metrics.registry)
    server.shutdown()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    server.start()
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    port = server.port
    assert port > 0
    server.shutdown()
    server.shutdown()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


class Flag:
    def __init__(self) -> None:
        self.healthy = True

    def __call__(self) -> bool:
        return self.healthy


@pytest.fixture
def flag() -> Flag:
    return Flag()


@pytest.fixture
def health_url(flag: Flag) -> Iterator[str]:
    server = HealthServer(HealthConfig(endpoint="127.0.0.1:0"), flag)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


@pytest.mark.parametrize(
    ("healthy", "status", "reply"),
    [(True, 200, {"status": "ok"}), (False, 503, {"status": "unavailable"})],
    ids=["healthy", "unhealthy"],
)
@pytest.mark.parametrize("path", ["/", "/health"])
def test_health(
    health_url: str, flag: Flag, healthy: bool, status: int, reply: dict[str, str], path: str
) -> None:
    flag.healthy = healthy
    code, headers, body = get(health_url + path)
    assert code == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == reply


def test_health_follows_the_check(health_url: str, flag: Flag) -> None:
    assert get(health_url)[0] == 200
    flag.healthy = False
    assert get(health_url)[0] == 503
    flag.healthy = True
    assert get(health_url)[0] == 200


def test_health_check_that_raises_is_unhealthy(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("state unreadable")

    server = HealthServer(HealthConfig(endpoint="127.0.0.1:0"), broken)
    server.start()
    try:
        assert get(f"http://127.0.0.1:{server.port}/health")[0] == 503
    finally:
        server.shutdown()
    assert "health check raised" in caplog.text


def test_health_unknown_path_is_404(health_url: str) -> None:
    assert get(health_url + "/metrics")[0] == 404
