"""OTLP/HTTP against a started Service: real senders, every status code, TLS and mTLS.

The OpenTelemetry Python SDK's HTTP exporter replays the end-to-end workload of
test_e2e_sdk.py, and curl posts the OTLP/JSON fixture plainly, gzipped and chunked; the
figures on /metrics must be exact. The status tests drive raw requests with http.client
against services on a fake clock, which a test advances to close what it sent.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from certs import Pki, make_pki
from conftest import RunningService
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from otlp import BASE_NS, S, body
from test_e2e_sdk import (
    BUSY,
    CPU_SHARE,
    INTERNET_BYTES,
    JOB_USD,
    OUTCOME,
    SAME_ZONE_BYTES,
    SPANS_SENT,
    TENANT,
    Workload,
    labels,
)
from test_receive_grpc import BAD, CHECKOUT, build, good_job, good_job_usd

from costproc.clock import FakeClock
from costproc.config.model import Config
from costproc.errors import StartupError
from costproc.receive.http_server import accepts_gzip
from costproc.service import Service

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TOKEN = "tok-7c1e9a3f55"
SECRET = "attribute-value-never-logged"
FIXTURE = Path(__file__).parent / "testdata" / "otlp" / "trace.json"
SECOND = 1_000_000_000

MakeConfig = Callable[[Mapping[str, Any]], Config]
StartService = Callable[..., RunningService]


# -- a raw client ----------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP response, read in full."""

    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def content(self) -> bytes:
        """The body with any Content-Encoding undone."""
        if self.header("Content-Encoding") == "gzip":
            return gzip.decompress(self.raw)
        return self.raw

    @property
    def content_type(self) -> str:
        return (self.header("Content-Type") or "").split(";")[0]

    def status_body(self) -> status_pb2.Status:
        """The google.rpc.Status of an error reply, in whichever encoding it came."""
        if self.content_type == JSON:
            return json_format.Parse(self.content, status_pb2.Status())
        assert self.content_type == PROTOBUF, self.content_type
        return status_pb2.Status.FromString(self.content)

    def export_response(self) -> ExportTraceServiceResponse:
        if self.content_type == JSON:
            return json_format.Parse(self.content, ExportTraceServiceResponse())
        assert self.content_type == PROTOBUF, self.content_type
        return ExportTraceServiceResponse.FromString(self.content)


def send(
    url: str,
    payload: bytes | None = b"",
    *,
    method: str = "POST",
    content_type: str | None = PROTOBUF,
    headers: Mapping[str, str] | None = None,
    chunked: bool = False,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a fresh connection; `chunked` sends the body without Content-Length."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port
    connection = (
        http.client.HTTPSConnection(host, port, timeout=10, context=context)
        if parts.scheme == "https"
        else http.client.HTTPConnection(host, port, timeout=10)
    )
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    try:
        if chunked and payload:
            half = len(payload) // 2
            pieces = iter([payload[:half], payload[half:]])
            connection.request(method, parts.path, pieces, sent, encode_chunked=True)
        else:
            connection.request(method, parts.path, payload, sent)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# -- services on a fake clock ----------------------------------------------------------


@dataclass
class Http:
    """A running service, its fake clock and its OTLP/HTTP URL."""

    running: RunningService
    clock: FakeClock

    @property
    def url(self) -> str:
        return self.running.http_url

    def post(self, payload: bytes, **options: Any) -> Reply:
        return send(self.url, payload, **options)

    def close_jobs(self, jobs: float) -> None:
        """Move past completion_wait and wait until `jobs` jobs have finished in all."""
        self.clock.advance(1.0)
        self.running.wait_for_total("costproc_jobs_total", jobs)

    def total(self, name: str, **labels: str) -> float:
        return self.running.total(name, **labels)


@pytest.fixture
def start(make_config: MakeConfig, start_service: StartService) -> Callable[..., Http]:
    def start(overlay: Mapping[str, Any] | None = None) -> Http:
        clock = FakeClock()
        return Http(start_service(make_config(overlay or {}), clock), clock)

    return start


@pytest.fixture
def server(start: Callable[..., Http]) -> Http:
    return start()


def http_overlay(**section: Any) -> dict[str, Any]:
    return {"receivers": {"otlp": {"http": section}}}


def json_job(trace_hex: str, job_id: str, start_ms: int = 0, end_ms: int = 1000) -> dict[str, Any]:
    """One checkout SERVER span as OTLP/JSON, in a request of its own."""
    span = {
        "traceId": trace_hex,
        "spanId": "00000000000000a1",
        "name": "handle",
        "kind": 2,
        "startTimeUnixNano": str(BASE_NS + start_ms * 1_000_000),
        "endTimeUnixNano": BASE_NS + end_ms * 1_000_000,
        "attributes": [{"key": "job.id", "value": {"stringValue": job_id}}],
        "flags": 256,
    }
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}


ONE_SECOND_JOB_USD = good_job_usd() - 1000 * 0.09 / 1e9  # good_job without its egress


# -- the real Python SDK ---------------------------------------------------------------


@pytest.fixture(
    scope="module", params=[Compression.NoCompression, Compression.Gzip], ids=["plain", "gzip"]
)
def sdk_compression(request: pytest.FixtureRequest) -> Compression:
    value: Compression = request.param
    return value


@pytest.fixture(scope="module")
def sdk_running(
    make_config: MakeConfig, start_service: StartService, sdk_compression: Compression
) -> Iterator[RunningService]:
    running = start_service(make_config({}))
    provider = TracerProvider(resource=Resource({"service.name": "checkout"}))
    exporter = OTLPSpanExporter(endpoint=running.http_url, timeout=10, compression=sdk_compression)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    Workload(provider).run()
    assert provider.force_flush(10_000)
    running.wait_for_total("costproc_jobs_total", 4)
    yield running
    provider.shutdown()


def test_sdk_jobs_by_outcome(sdk_running: RunningService) -> None:
    jobs = {
        (s.labels["job_type"], s.labels["outcome"]): s.value
        for s in sdk_running.samples()
        if s.name == "costproc_jobs_total"
    }
    assert jobs == {(job, OUTCOME[job]): 1.0 for job in BUSY}
    assert sdk_running.total("costproc_spans_received_total") == SPANS_SENT
    assert sdk_running.total("costproc_spans_rejected_total") == 0
    assert sdk_running.total("costproc_requests_refused_total") == 0


@pytest.mark.parametrize("job", sorted(BUSY))
def test_sdk_job_cost(sdk_running: RunningService, job: str) -> None:
    by_job = labels(job, TENANT[job], outcome=OUTCOME[job])
    assert sdk_running.total("costproc_job_cost_usd_count", **by_job) == 1
    assert sdk_running.total("costproc_job_cost_usd_sum", **by_job) == pytest.approx(
        JOB_USD[job], rel=1e-9
    )
    cpu = sdk_running.total("costproc_job_cpu_seconds_sum", **labels(job, TENANT[job]))
    assert cpu == pytest.approx(BUSY[job] * CPU_SHARE, rel=1e-9)


def test_sdk_totals(sdk_running: RunningService) -> None:
    assert sdk_running.total("costproc_cost_usd_total") == pytest.approx(
        sum(JOB_USD.values()), rel=1e-9
    )
    egress = {
        s.labels["class"]: s.value
        for s in sdk_running.samples()
        if s.name == "costproc_egress_bytes_total"
    }
    assert egress == {"internet": INTERNET_BYTES, "same_zone": SAME_ZONE_BYTES}
    failed = sdk_running.total("costproc_failed_attempt_cost_usd_total")
    assert failed == pytest.approx(JOB_USD["payment"], rel=1e-9)


# -- curl and the OTLP/JSON fixture ----------------------------------------------------

# The fixture's two jobs, by hand from the bundled price table (checkout: 2 cores and
# 4 GB shared by 8 jobs). order-json-1: busy 1.0 s, 250 000 response bytes and an
# explicit 1 000 000 byte upload, both to the internet. 7700: busy 2.0 s and a gpt-4o
# call of 1200 input and 300 output tokens.
FIXTURE_RESOURCE_USD_PER_S = 2 / 8 * 0.031611 / 3600 + 4 / 8 * 0.004237 / 3600
FIXTURE_EGRESS = 1_250_000
FIXTURE_USD = {
    "order": 1.0 * FIXTURE_RESOURCE_USD_PER_S + FIXTURE_EGRESS * 0.09 / 1e9,
    "chat": 2.0 * FIXTURE_RESOURCE_USD_PER_S + 1200 * 2.50 / 1e6 + 300 * 10.00 / 1e6,
}


def curl(
    url: str, data: Path, *headers: str, options: Sequence[str] = ()
) -> tuple[int, str, bytes, str]:
    """POST a file with the curl binary: (status, content type, body, curl's trace)."""
    binary = shutil.which("curl")
    if binary is None:
        pytest.skip("curl is not installed")
    out = data.with_suffix(".reply")
    argv = [binary, "--silent", "--show-error", "--verbose", "--noproxy", "*", "--max-time"]
    argv += ["20", "--output", str(out), "--write-out", "%{http_code} %{content_type}"]
    argv += ["-H", f"Content-Type: {JSON}", "--data-binary", f"@{data}"]
    for header in headers:
        argv += ["-H", header]
    argv += options
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=30, check=True)
    status, _, content_type = done.stdout.partition(" ")
    return int(status), content_type, out.read_bytes(), done.stderr


CURL_WAYS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "data-binary": (False, ()),
    "gzip": (True, ("Content-Encoding: gzip",)),
    "chunked": (False, ("Transfer-Encoding: chunked",)),
}


@pytest.mark.parametrize(("compress", "headers"), CURL_WAYS.values(), ids=CURL_WAYS.keys())
def test_curl_posts_the_json_fixture(
    make_config: MakeConfig,
    start_service: StartService,
    tmp_path: Path,
    compress: bool,
    headers: tuple[str, ...],
) -> None:
    running = start_service(make_config({}))
    data = tmp_path / "trace.json"
    fixture = FIXTURE.read_bytes()
    data.write_bytes(gzipped(fixture) if compress else fixture)

    status, content_type, reply, trace = curl(running.http_url, data, *headers)

    assert (status, content_type, reply) == (200, JSON, b"{}")
    sent = [line.lower() for line in trace.splitlines() if line.startswith("> ")]
    if "chunked" in " ".join(headers):
        assert "> transfer-encoding: chunked" in sent
        assert not any(line.startswith("> content-length") for line in sent)
    running.wait_for_total("costproc_jobs_total", 2)
    assert running.total("costproc_jobs_total", outcome="success") == 2
    assert running.total("costproc_spans_received_total") == 4
    assert running.total("costproc_spans_rejected_total") == 0
    for job, tenant in (("order", "acme"), ("chat", "globex")):
        by_job = labels(job, tenant, outcome="success")
        assert running.total("costproc_job_cost_usd_sum", **by_job) == pytest.approx(
            FIXTURE_USD[job], rel=1e-9
        )
    assert running.total("costproc_egress_bytes_total", **{"class": "internet"}) == FIXTURE_EGRESS
    assert running.total("costproc_cost_usd_total", component="llm_tokens") == pytest.approx(
        1200 * 2.50 / 1e6 + 300 * 10.00 / 1e6, rel=1e-9
    )


def test_curl_expect_100_continue_is_answered(server: Http, tmp_path: Path) -> None:
    data = tmp_path / "trace.json"
    data.write_bytes(FIXTURE.read_bytes())
    started = time.monotonic()

    # Unanswered, curl would wait out --expect100-timeout before sending the body.
    status, _, _, trace = curl(
        server.url, data, "Expect: 100-continue", options=["--expect100-timeout", "15"]
    )

    assert status == 200
    assert "< HTTP/1.1 100 Continue" in trace
    assert time.monotonic() - started < 10


# -- 200 ------------------------------------------------------------------------------


def test_accepted_protobuf_has_empty_response(server: Http) -> None:
    reply = server.post(body(good_job(1, "j1")))

    assert (reply.status, reply.content_type, reply.raw) == (200, PROTOBUF, b"")
    server.close_jobs(1)
    assert server.total("costproc_cost_usd_total") == pytest.approx(good_job_usd(), rel=1e-9)


@pytest.mark.parametrize(
    "content_type", [f"{JSON}; charset=utf-8", "Application/JSON", f"{JSON};charset=UTF-8"]
)
def test_media_type_parameters_and_case_are_ignored(server: Http, content_type: str) -> None:
    payload = json.dumps(json_job("0af7651916cd43dd8448eb211c80319c", "j1")).encode()

    reply = server.post(payload, content_type=content_type)

    assert (reply.status, reply.content_type, reply.raw) == (200, JSON, b"{}")


def test_partial_success_protobuf(server: Http) -> None:
    reply = server.post(build(good_job(1, "good-1"), [BAD["end-before-start"]]).SerializeToString())

    assert reply.status == 200
    response = reply.export_response()
    assert response.partial_success.rejected_spans == 1
    assert "end_before_start" in response.partial_success.error_message
    server.close_jobs(1)
    assert server.total("costproc_spans_rejected_total", reason="end_before_start") == 1
    assert server.total("costproc_cost_usd_total") == pytest.approx(good_job_usd(), rel=1e-9)


def test_partial_success_json(server: Http) -> None:
    document = json_job("0af7651916cd43dd8448eb211c80319c", "good")
    backwards = json_job("0af7651916cd43dd8448eb211c80319d", "bad", start_ms=500, end_ms=100)
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans += backwards["resourceSpans"][0]["scopeSpans"][0]["spans"]

    reply = server.post(json.dumps(document).encode(), content_type=JSON)

    assert (reply.status, reply.content_type) == (200, JSON)
    decoded = json.loads(reply.content)
    # The protobuf JSON mapping: lowerCamelCase keys, int64 as a string.
    assert decoded["partialSuccess"]["rejectedSpans"] == "1"
    assert "end_before_start" in decoded["partialSuccess"]["errorMessage"]
    server.close_jobs(1)
    assert server.total("costproc_spans_received_total") == 2
    assert server.total("costproc_cost_usd_total") == pytest.approx(ONE_SECOND_JOB_USD, rel=1e-9)


# -- 400 ------------------------------------------------------------------------------

GOOD = body(good_job(1, "before"))
DEEP = '{"kvlistValue": {"values": [{"key": "k", "value": ' * 60 + "{}" + "}]}}" * 60
UNDECODABLE: dict[str, tuple[str, bytes, str]] = {
    "text-as-protobuf": (PROTOBUF, b"not a protobuf at all", "ExportTraceServiceRequest"),
    "truncated-protobuf": (PROTOBUF, GOOD[:-7], "ExportTraceServiceRequest"),
    "bad-json": (JSON, b'{"resourceSpans": [', "not JSON"),
    "json-array": (JSON, b"[]", "must be a JSON object"),
    "bad-hex-trace-id": (
        JSON,
        json.dumps(json_job("zz" * 16, SECRET)).encode(),
        "traceId: is not hex",
    ),
    "nested-past-the-decoder-limit": (
        JSON,
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"key": "k", "value": '
        + DEEP.encode()
        + b"}]}]}]}]}",
        "ExportTraceServiceRequest",
    ),
    "corrupt-gzip": (
        PROTOBUF,
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 20,
        "compressed body is corrupt",
    ),
    "truncated-gzip": (PROTOBUF, gzipped(GOOD)[:-12], "truncated"),
}


@pytest.mark.parametrize(
    ("content_type", "payload", "message"), UNDECODABLE.values(), ids=UNDECODABLE.keys()
)
def test_undecodable_is_400(server: Http, content_type: str, payload: bytes, message: str) -> None:
    compressed = payload.startswith(b"\x1f\x8b")
    headers = {"Content-Encoding": "gzip"} if compressed else {}

    reply = server.post(payload, content_type=content_type, headers=headers)

    assert (reply.status, reply.content_type) == (400, content_type)
    status = reply.status_body()
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert message in status.message
    assert SECRET not in status.message
    assert server.total("costproc_spans_received_total") == 0
    assert server.post(body(good_job(2, "after"))).status == 200
    server.close_jobs(1)


# -- 401 ------------------------------------------------------------------------------


def test_bearer_token(start: Callable[..., Http], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = start(http_overlay(auth={"bearer_token": TOKEN}))
    payload = body(good_job(1, "j1"))
    wrong = "Bearer not-" + TOKEN

    for headers in ({}, {"Authorization": wrong}, {"Authorization": TOKEN}):
        reply = server.post(payload, headers=headers)
        assert (reply.status, reply.header("WWW-Authenticate")) == (401, "Bearer")
        assert reply.status_body().code == code_pb2.UNAUTHENTICATED
    assert server.total("costproc_spans_received_total") == 0

    for scheme in ("Bearer", "bearer"):
        assert server.post(payload, headers={"Authorization": f"{scheme} {TOKEN}"}).status == 200
    exporter = OTLPSpanExporter(
        endpoint=server.url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        assert exporter.export(sdk_spans(["sdk-1"])) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    server.close_jobs(2)
    assert TOKEN not in caplog.text


def test_attribute_values_and_tokens_stay_out_of_logs(
    start: Callable[..., Http], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start(http_overlay(auth={"bearer_token": TOKEN}))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad_hex = json.dumps(json_job("zz" * 16, SECRET)).encode()
    secret_spans = [S(1, 1, None, 500, 100, {"job.id": "j", "note": SECRET}, resource=CHECKOUT)]

    assert server.post(bad_hex, content_type=JSON, headers=auth).status == 400
    assert server.post(body(secret_spans), headers=auth).status == 200
    assert server.post(b"garbage" + SECRET.encode(), headers=auth).status == 400
    assert server.post(body(secret_spans), headers={"Authorization": SECRET}).status == 401

    assert SECRET not in caplog.text
    assert TOKEN not in caplog.text


# -- 404, 405, 415 --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/v1/metrics", "/v1/logs", "/v1/traces/", "/v1/trace"])
def test_other_paths_are_404(server: Http, path: str) -> None:
    url = urllib.parse.urlsplit(server.url)._replace(path=path).geturl()
    assert send(url, GOOD).status == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_405_with_allow(server: Http, method: str) -> None:
    payload = None if method in ("GET", "HEAD", "OPTIONS") else GOOD
    reply = send(server.url, payload, method=method)

    assert (reply.status, reply.header("Allow")) == (405, "POST")
    assert server.total("costproc_spans_received_total") == 0


UNSUPPORTED: dict[str, tuple[str | None, dict[str, str]]] = {
    "text-plain": ("text/plain", {}),
    "grpc": ("application/grpc", {}),
    "no-content-type": (None, {}),
    "form": ("application/x-www-form-urlencoded", {}),
    "brotli": (PROTOBUF, {"Content-Encoding": "br"}),
    "two-codings": (PROTOBUF, {"Content-Encoding": "gzip, gzip"}),
}


@pytest.mark.parametrize(("content_type", "headers"), UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_media_type_or_coding_is_415(
    server: Http, content_type: str | None, headers: dict[str, str]
) -> None:
    reply = server.post(GOOD, content_type=content_type, headers=headers)

    assert reply.status == 415
    assert server.total("costproc_spans_received_total") == 0


# -- 413 ------------------------------------------------------------------------------

LIMIT_MIB = 0.0625  # 64 KiB
LIMIT = int(LIMIT_MIB * 1024 * 1024)


def big_job(size: int) -> bytes:
    return body([S(1, 1, None, 0, 1000, {"job.id": "big", "blob": "x" * size}, resource=CHECKOUT)])


OVERSIZED: dict[str, tuple[bytes, dict[str, str], bool]] = {
    "content-length": (big_job(LIMIT), {}, False),
    "chunked": (big_job(LIMIT), {}, True),
    "gzip-bomb": (gzipped(b"\0" * (8 * LIMIT)), {"Content-Encoding": "gzip"}, False),
    "gzip-bomb-chunked": (gzipped(b"\0" * (8 * LIMIT)), {"Content-Encoding": "gzip"}, True),
    "deflate-bomb": (zlib.compress(b"\0" * (8 * LIMIT)), {"Content-Encoding": "deflate"}, False),
    "gzip-members-adding-up": (
        gzipped(big_job(LIMIT // 2)) + gzipped(big_job(LIMIT // 2)),
        {"Content-Encoding": "gzip"},
        False,
    ),
}


@pytest.mark.parametrize(
    ("payload", "headers", "chunked"), OVERSIZED.values(), ids=OVERSIZED.keys()
)
def test_over_the_size_limit_is_413(
    start: Callable[..., Http], payload: bytes, headers: dict[str, str], chunked: bool
) -> None:
    server = start(http_overlay(max_request_body_size_mib=LIMIT_MIB))
    if "Content-Encoding" in headers:
        assert len(payload) < LIMIT  # small on the wire, large once inflated

    reply = server.post(payload, headers=headers, chunked=chunked)

    assert reply.status == 413
    assert reply.status_body().code == code_pb2.RESOURCE_EXHAUSTED
    assert server.total("costproc_spans_received_total") == 0
    assert server.post(body(good_job(2, "after")), chunked=chunked).status == 200


def test_just_under_the_limit_is_accepted_compressed_or_not(start: Callable[..., Http]) -> None:
    server = start(http_overlay(max_request_body_size_mib=LIMIT_MIB))
    payload = big_job(LIMIT - 200)
    assert len(payload) <= LIMIT

    assert server.post(payload).status == 200
    gzip_headers = {"Content-Encoding": "gzip"}
    assert server.post(gzipped(payload), headers=gzip_headers, chunked=True).status == 200
    deflated = zlib.compress(payload)
    assert server.post(deflated, headers={"Content-Encoding": "deflate"}).status == 200
    assert server.total("costproc_spans_received_total") == 3


# -- 503 ------------------------------------------------------------------------------


def test_refused_at_the_bound_then_accepted_once_drained(start: Callable[..., Http]) -> None:
    # Open state of 2 spans reaches the watermark (0.9 x 2): the next request is refused.
    server = start({"rollup": {"max_inflight_spans": 2, "backpressure_watermark": 0.9}})
    assert server.post(body(good_job(1, "first"))).status == 200
    retried = body(good_job(2, "retried"))
    retried_json = json.dumps(json_job("0af7651916cd43dd8448eb211c80319c", "json")).encode()

    for payload, content_type in ((retried, PROTOBUF), (retried_json, JSON)):
        reply = server.post(payload, content_type=content_type)
        assert (reply.status, reply.header("Retry-After")) == (503, "1")
        assert reply.content_type == content_type
        status = reply.status_body()
        assert status.code == code_pb2.UNAVAILABLE
        assert "max_inflight_spans" in status.message
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        assert retry.retry_delay.seconds == 1
    refused = server.total("costproc_requests_refused_total", reason="max_inflight_spans")
    assert refused == 2
    assert server.total("costproc_spans_received_total") == 2

    server.close_jobs(1)  # the first job closes; its trace no longer counts as open
    assert server.post(retried).status == 200
    server.close_jobs(2)
    assert server.total("costproc_cost_usd_total") == pytest.approx(2 * good_job_usd(), rel=1e-9)


# -- gzip responses -------------------------------------------------------------------


def test_gzip_response_when_accepted(server: Http) -> None:
    partial = build(good_job(1, "good-1"), [BAD["end-before-start"]]).SerializeToString()
    gzip_ok = {"Accept-Encoding": "gzip"}

    reply = server.post(partial, headers=gzip_ok)
    assert reply.header("Content-Encoding") == "gzip"
    assert reply.export_response().partial_success.rejected_spans == 1

    document = json.dumps(json_job("0af7651916cd43dd8448eb211c80319c", "j2")).encode()
    reply = server.post(document, content_type=JSON, headers={"Accept-Encoding": "br, gzip"})
    assert (reply.header("Content-Encoding"), reply.content) == ("gzip", b"{}")

    reply = server.post(b"garbage", headers=gzip_ok)
    assert (reply.status, reply.header("Content-Encoding")) == (400, "gzip")
    assert reply.status_body().code == code_pb2.INVALID_ARGUMENT

    reply = server.post(partial, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert reply.header("Content-Encoding") is None
    assert reply.export_response().partial_success.rejected_spans == 1


ACCEPT_ENCODING: dict[str, tuple[str | None, bool]] = {
    "absent": (None, False),
    "empty": ("", False),
    "gzip": ("gzip", True),
    "upper-case": ("GZIP", True),
    "x-gzip": ("x-gzip", True),
    "in-a-list": ("br, gzip, deflate", True),
    "q-positive": ("gzip;q=0.5", True),
    "q-zero": ("gzip;q=0", False),
    "q-zero-spaced": ("gzip ; q=0.0", False),
    "wildcard": ("*", True),
    "wildcard-but-not-gzip": ("*, gzip;q=0", False),
    "identity-only": ("identity", False),
    "bad-q": ("gzip;q=lots", False),
}


@pytest.mark.parametrize(("header", "want"), ACCEPT_ENCODING.values(), ids=ACCEPT_ENCODING.keys())
def test_accepts_gzip(header: str | None, want: bool) -> None:
    assert accepts_gzip(header) is want


# -- IPv6 -----------------------------------------------------------------------------


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_endpoint(make_config: MakeConfig, start_service: StartService) -> None:
    running = start_service(make_config(http_overlay(endpoint="[::1]:0")))

    reply = send(f"http://[::1]:{running.service.http_port}/v1/traces", body(good_job(1, "v6")))

    assert reply.status == 200
    assert running.total("costproc_spans_received_total") == 2


# -- start-up ---------------------------------------------------------------------------


def test_a_taken_port_is_a_startup_error_naming_the_key(make_config: MakeConfig) -> None:
    async def start(config: Config) -> None:
        service = Service(config)  # built on the loop, as grpc.aio wants
        await service.start()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"127.0.0.1:{taken.getsockname()[1]}"
        config = make_config(http_overlay(endpoint=endpoint))
        with pytest.raises(StartupError, match=rf"{endpoint} \(receivers\.otlp\.http\.endpoint\)"):
            asyncio.run(start(config))


# -- TLS and mTLS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_overlay(pki: Pki, mutual: bool) -> dict[str, Any]:
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca_cert)
    return http_overlay(tls=tls)


def client_context(pki: Pki, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_cert)
    if with_certificate:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def sdk_spans(job_ids: Sequence[str]) -> Sequence[ReadableSpan]:
    """One 1 s checkout SERVER span per job, each its own trace, from the real SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(CHECKOUT))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("costproc.test")
    for job_id in job_ids:
        span = tracer.start_span(
            "handle", kind=SpanKind.SERVER, attributes={"job.id": job_id}, start_time=BASE_NS
        )
        span.end(end_time=BASE_NS + SECOND)
    provider.shutdown()
    return memory.get_finished_spans()


def sdk_export(url: str, spans: Sequence[ReadableSpan], **options: Any) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=url, timeout=10, **options)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


# Whatever a refused TLS connection surfaces as: an alert, a reset, an early EOF.
REFUSED_CONNECTION = (OSError, http.client.HTTPException)


@pytest.fixture
def requests_honours_certificate_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset what requests lets override the SDK's certificate_file: its CA bundle variables."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("requests_honours_certificate_file")
def test_https(start: Callable[..., Http], pki: Pki) -> None:
    server = start(tls_overlay(pki, mutual=False))
    assert server.url.startswith("https://")

    reply = send(server.url, body(good_job(1, "tls-1")), context=client_context(pki))
    assert reply.status == 200
    result = sdk_export(server.url, sdk_spans(["tls-2"]), certificate_file=str(pki.ca_cert))
    assert result == SpanExportResult.SUCCESS

    plain = server.url.replace("https://", "http://")
    with pytest.raises(REFUSED_CONNECTION):
        send(plain, body(good_job(3, "plain")))
    server.close_jobs(2)
    assert server.total("costproc_spans_received_total") == 3


@pytest.mark.usefixtures("requests_honours_certificate_file")
def test_mutual_tls(start: Callable[..., Http], pki: Pki, tmp_path: Path) -> None:
    server = start(tls_overlay(pki, mutual=True))
    stranger = make_pki(tmp_path / "stranger")
    stranger_context = ssl.create_default_context(cafile=pki.ca_cert)
    stranger_context.load_cert_chain(stranger.client_cert, stranger.client_key)

    for context in (client_context(pki), stranger_context):
        with pytest.raises(REFUSED_CONNECTION):
            send(server.url, body(good_job(1, "no-cert")), context=context)
    assert server.total("costproc_spans_received_total") == 0

    reply = send(server.url, body(good_job(2, "cert")), context=client_context(pki, True))
    assert reply.status == 200
    result = sdk_export(
        server.url,
        sdk_spans(["sdk-cert"]),
        certificate_file=str(pki.ca_cert),
        client_certificate_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
    )
    assert result == SpanExportResult.SUCCESS
    server.close_jobs(2)
    assert server.total("costproc_jobs_total") == 2
