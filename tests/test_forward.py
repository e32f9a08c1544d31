"""Forwarding: every received span reaches a downstream OTLP sink unchanged, plus cost spans.

The sinks are real servers on port 0 (grpc.aio, aiohttp) on an event loop of their own;
the costproc under test runs on another, as it would in production. Retry intervals are
milliseconds, so outages, deadlines and backpressure play out within a second or two.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from aiohttp import web
from certs import Pki, make_pki
from conftest import RunningService
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from otlp import S, body
from prometheus_client import CollectorRegistry

from costproc.config.model import (
    Config,
    ForwardConfig,
    RetryConfig,
    TLSClientConfig,
    TLSServerConfig,
)
from costproc.export.forward import (
    COST_SPAN_NAME,
    MAX_BATCH,
    SCOPE,
    SENDERS,
    Forwarder,
    backoff,
    grpc_failure,
    retry_after_seconds,
    traces_url,
)
from costproc.model import Cost, JobResult, Labels
from costproc.security import server_ssl_context

T = TypeVar("T")
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
T0 = 1_767_229_200_000_000_000  # 2026-01-01T01:00:00Z, inside the bundled "2026-01" table
MS = 1_000_000
FAST_RETRY = {"initial_interval": "5ms", "max_interval": "20ms", "max_elapsed_time": "10s"}
UNAVAILABLE, INVALID = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT


# -- sinks -----------------------------------------------------------------------------


class LoopThread:
    """An event loop on a thread of its own, where the sinks run."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []  # stopped when the loop closes
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class Sink:
    """What a sink answers and what it received; shared by the gRPC and HTTP sinks.

    `script` holds the answers for the first calls (a gRPC code or an HTTP status, with
    a retry delay hint or None); after it, every call gets `always` (None: success).
    While `gate` is set up and not open, calls wait in the sink.
    """

    script: list[tuple[Any, float | None]] = field(default_factory=list)
    always: Any = None
    rejected_spans: int = 0
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    calls: int = 0
    holding: int = 0
    gate: asyncio.Event | None = None
    port: int = 0
    pki: Pki | None = None  # serve TLS and require a client certificate signed by its CA
    loops: LoopThread | None = None
    stop: Callable[[], Coroutine[Any, Any, None]] | None = None

    async def start(self, port: int = 0) -> None:
        """Listen on `port` (0: any free one); sets `port` and `stop`."""
        raise NotImplementedError

    def answer(self) -> tuple[Any, float | None]:
        self.calls += 1
        return self.script.pop(0) if self.script else (self.always, None)

    async def wait_gate(self) -> None:
        if self.gate is not None:
            self.holding += 1
            await self.gate.wait()
            self.holding -= 1

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.loops is not None and self.gate is not None
        self.loops.loop.call_soon_threadsafe(self.gate.set)

    def requests(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(b) for b in list(self.bodies)]

    def response(self) -> bytes:
        response = ExportTraceServiceResponse()
        if self.rejected_spans:
            response.partial_success.rejected_spans = self.rejected_spans
            response.partial_success.error_message = "sink rejects some"
        return bytes(response.SerializeToString())


class GrpcSink(Sink):
    """TraceService/Export on grpc.aio, keeping raw request bodies."""

    async def start(self, port: int = 0) -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(self.export)},
        )
        server.add_generic_rpc_handlers((handler,))
        address = f"127.0.0.1:{port}"
        if self.pki is None:
            self.port = server.add_insecure_port(address)
        else:
            pki = self.pki
            credentials = grpc.ssl_server_credentials(
                [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                root_certificates=pki.ca_cert.read_bytes(),
                require_client_auth=True,
            )
            self.port = server.add_secure_port(address, credentials)
        await server.start()

        async def stop() -> None:
            await server.stop(0)

        self.stop = stop

    async def export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.headers.append(dict(context.invocation_metadata()))
        await self.wait_gate()
        code, delay = self.answer()
        if code is not None:
            if delay is not None:
                info = error_details_pb2.RetryInfo()
                info.retry_delay.FromNanoseconds(int(delay * 1e9))
                status = status_pb2.Status(code=code.value[0], message="sink says no")
                status.details.add().Pack(info)
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", status.SerializeToString()),)
                )
            context.set_code(code)
            context.set_details("sink says no")
            return b""
        self.bodies.append(request)
        return self.response()


class HttpSink(Sink):
    """POST /v1/traces on aiohttp, keeping request bodies (gzip undone)."""

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.export)
        runner = web.AppRunner(app)
        await runner.setup()
        context = None
        if self.pki is not None:
            pki = self.pki
            tls = TLSServerConfig(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
            context = server_ssl_context(tls)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        self.port = runner.addresses[0][1]
        self.stop = runner.cleanup

    async def export(self, request: web.Request) -> web.Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        raw = await request.read()
        await self.wait_gate()
        status, delay = self.answer()
        if status is not None:
            headers = {"Retry-After": f"{delay:g}"} if delay is not None else {}
            return web.Response(status=status, text="sink says no", headers=headers)
        # aiohttp undoes Content-Encoding itself; a body that still looks gzipped was not.
        self.bodies.append(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        return web.Response(body=self.response(), content_type="application/x-protobuf")


@pytest.fixture(scope="module")
def sink_loop() -> Iterator[LoopThread]:
    loops = LoopThread()
    yield loops
    for sink in loops.sinks:
        if sink.gate is not None:
            sink.release()
        if sink.stop is not None:
            loops.run(sink.stop())
    loops.close()


@pytest.fixture(scope="module")
def start_sink(sink_loop: LoopThread) -> Callable[..., Sink]:
    """Start a sink: `start_sink("grpc", script=[...])`, optionally on a given port."""

    def start(protocol: str, port: int = 0, **answers: Any) -> Sink:
        sink: Sink = GrpcSink(**answers) if protocol == "grpc" else HttpSink(**answers)
        sink.loops = sink_loop
        sink_loop.run(sink.start(port))
        sink_loop.sinks.append(sink)
        return sink

    return start


@pytest.fixture(scope="module")
def serve(
    sink_loop: LoopThread,
    make_config: Callable[[Mapping[str, Any]], Config],
    start_service: Callable[..., RunningService],
) -> Callable[..., RunningService]:
    """A Service forwarding to `endpoint`; sinks outlive it (sink_loop is set up first)."""

    def start(protocol: str, endpoint: str, **forward: Any) -> RunningService:
        overlay = {
            "endpoint": endpoint,
            "protocol": protocol,
            "tls": {"insecure": True},
            "timeout": "2s",
            "retry_on_failure": FAST_RETRY,
            **forward,
        }
        return start_service(make_config({"exporters": {"forward": overlay}}))

    return start


def endpoint(protocol: str, port: int, path: str = "") -> str:
    return f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}{path}"


def free_port() -> int:
    """A port nobody listens on now (for a sink started late)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class RawClient:
    """TraceService/Export on raw bytes, as any OTLP sender."""

    def __init__(self, running: RunningService) -> None:
        self.channel = grpc.insecure_channel(running.grpc_target)
        self.export = self.channel.unary_unary(EXPORT)

    def send(self, payload: bytes) -> None:
        self.export(payload, timeout=5)

    def close(self) -> None:
        self.channel.close()


def job_body(n: int) -> bytes:
    """One request holding one small job (trace n) of service checkout."""
    checkout = {"service.name": "checkout"}
    root = S(
        n, 1, None, 0, 100, {"job.id": f"job-{n}", "job.type": "t"}, "server", resource=checkout
    )
    return body([root, S(n, 2, 1, 10, 50, resource=checkout)])


def spans_of(requests: list[ExportTraceServiceRequest], scope: str | None) -> list[Any]:
    """(resource, scope, span) of every span; `scope` picks cost spans or the rest."""
    out: list[Any] = []
    for request in requests:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                if (ss.scope.name == SCOPE) == (scope == SCOPE):
                    out.extend((rs.resource, ss.scope, span) for span in ss.spans)
    return out


def by_ids(spans: list[Any]) -> dict[tuple[bytes, bytes], Any]:
    return {(t[2].trace_id, t[2].span_id): t for t in spans}


def value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


def close_to(x: float) -> Any:
    return pytest.approx(x, rel=1e-12, abs=1e-18)


def wait_total(
    running: RunningService, name: str, want: float, what: str, timeout: float = 10.0, **labels: str
) -> None:
    """Poll until the scraped `name{labels}` reaches `want` (at least)."""
    wait_until(lambda: running.total(name, **labels) >= want, what, timeout)


# -- every span unchanged, one cost span per job ---------------------------------------


class Workload:
    """Jobs with exact times through a real SDK pipeline (ms after T0)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("costproc.forward-test")
        self._ends: list[tuple[trace.Span, int]] = []

    def span(
        self,
        name: str,
        start: int,
        end: int,
        parent: trace.Span | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attrs: dict[str, Any] | None = None,
    ) -> trace.Span:
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(
            name, context=context, kind=kind, attributes=attrs, start_time=T0 + start * MS
        )
        self._ends.append((span, T0 + end * MS))
        return span

    def run(self) -> None:
        server = SpanKind.SERVER
        order = self.span("POST /orders", 0, 1000, kind=server, attrs=job("order", "acme"))
        order.set_attribute("http.response.body.size", 500_000)
        self.span("validate", 100, 400, order)
        chat = self.span("POST /chat", 0, 2000, kind=server, attrs=job("chat", "globex"))
        llm = {
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
        }
        self.span("openai", 200, 1800, chat, SpanKind.CLIENT, llm)
        refund = self.span("POST /refunds", 0, 300, kind=server, attrs=job("refund", "acme"))
        refund.set_status(Status(StatusCode.ERROR, "declined"))
        # A batch consumer: the message job's root is a child, not the trace's root.
        batch = self.span("consume", 0, 1000, kind=SpanKind.CONSUMER, attrs=job("batch", "acme"))
        message = self.span("process", 100, 400, batch, attrs=job("message", "acme"))
        self.span("db", 150, 350, message, SpanKind.CLIENT)
        for span, end in reversed(self._ends):
            span.end(end_time=end)


def job(job_type: str, tenant: str) -> dict[str, Any]:
    return {"job.id": f"{job_type}-1", "job.type": job_type, "tenant": tenant}


JOBS = {"order": "success", "chat": "success", "refund": "failure", "batch": "success"}
JOBS["message"] = "success"
JOB_TIMES = {"order": (0, 1000), "chat": (0, 2000), "refund": (0, 300)}
JOB_TIMES |= {"batch": (0, 1000), "message": (100, 400)}


@pytest.fixture(scope="module")
def forwarded(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService]
) -> Iterator[tuple[RunningService, Sink, list[ReadableSpan]]]:
    sink = start_sink("grpc")
    running = serve("grpc", endpoint("grpc", sink.port))
    provider = TracerProvider(resource=Resource({"service.name": "checkout"}))
    captured = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    exporter = OTLPSpanExporter(endpoint=running.grpc_target, insecure=True, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    Workload(provider).run()
    assert provider.force_flush(10_000)
    running.wait_for_total("costproc_jobs_total", len(JOBS))
    wait_until(lambda: len(spans_of(sink.requests(), SCOPE)) >= len(JOBS), "cost spans")
    yield running, sink, list(captured.get_finished_spans())
    provider.shutdown()


def test_every_span_arrives_unchanged(
    forwarded: tuple[RunningService, Sink, list[ReadableSpan]],
) -> None:
    running, sink, captured = forwarded
    sent = spans_of([encode_spans(captured)], None)
    got = spans_of(sink.requests(), None)
    assert len(got) == len(sent) == len(captured) == 8
    # Whole messages compare equal: ids, names, times, attributes, status, resource, scope.
    assert by_ids(got) == by_ids(sent)
    assert running.total("costproc_forward_dropped_total") == 0


def test_one_cost_span_per_job_in_its_trace(
    forwarded: tuple[RunningService, Sink, list[ReadableSpan]],
) -> None:
    _, sink, captured = forwarded
    roots = {str((s.attributes or {}).get("job.id")): s for s in captured}
    cost = spans_of(sink.requests(), SCOPE)
    by_job = {
        value(a.value): span
        for _, _, span in cost
        for a in span.attributes
        if a.key == "costproc.job.id"
    }
    assert len(cost) == len(by_job) == len(JOBS)
    for resource, scope, _ in cost:
        assert [(a.key, value(a.value)) for a in resource.attributes] == [("service.name", SCOPE)]
        assert scope.name == SCOPE
    for job_type, (start, end) in JOB_TIMES.items():
        span, root = by_job[f"{job_type}-1"], roots[f"{job_type}-1"]
        context = root.get_span_context()
        assert context is not None
        assert span.trace_id == context.trace_id.to_bytes(16, "big")
        assert span.parent_span_id == context.span_id.to_bytes(8, "big")
        assert (span.name, span.kind) == (COST_SPAN_NAME, Span.SPAN_KIND_INTERNAL)
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
            T0 + start * MS,
            T0 + end * MS,
        )
        assert len(span.span_id) == 8 and span.span_id != bytes(8)


@pytest.mark.parametrize("job_type", sorted(JOBS))
def test_cost_span_attributes_equal_metrics(
    forwarded: tuple[RunningService, Sink, list[ReadableSpan]], job_type: str
) -> None:
    running, sink, _ = forwarded
    spans = [s for _, _, s in spans_of(sink.requests(), SCOPE)]
    attrs = next(
        a
        for a in ({x.key: value(x.value) for x in s.attributes} for s in spans)
        if a["costproc.job.id"] == f"{job_type}-1"
    )
    tenant = "globex" if job_type == "chat" else "acme"
    assert {
        k: attrs[k] for k in attrs if not k.startswith(("costproc.cost.", "costproc.usage."))
    } == {
        "costproc.job.id": f"{job_type}-1",
        "costproc.job.type": job_type,
        "costproc.tenant": tenant,
        "costproc.job.outcome": JOBS[job_type],
        "costproc.job.attempts": 1,
        "costproc.price_table.version": "2026-01",
        "costproc.currency": "USD",
    }
    by = {"job_type": job_type}
    assert attrs["costproc.cost.total"] == close_to(
        running.total("costproc_job_cost_usd_sum", **by)
    )
    components = {
        k.removeprefix("costproc.cost."): v
        for k, v in attrs.items()
        if k.startswith("costproc.cost.") and k != "costproc.cost.total" and v
    }
    metered = {
        s.labels["component"]: s.value
        for s in running.samples()
        if s.name == "costproc_cost_usd_total" and s.labels["job_type"] == job_type
    }
    assert components == {k: close_to(v) for k, v in metered.items()}
    assert sum(components.values()) == close_to(attrs["costproc.cost.total"])
    for usage in ("cpu_seconds", "memory_gb_seconds", "gpu_seconds", "egress_bytes"):
        want = running.total(f"costproc_job_{usage}_sum", **by)
        assert attrs[f"costproc.usage.{usage}"] == close_to(want)
    if job_type == "chat":
        assert components["llm_tokens"] == close_to(1200 * 2.5e-6 + 300 * 10e-6)
    if job_type == "order":
        assert attrs["costproc.usage.egress_bytes"] == 500_000


def test_forward_self_metrics_after_clean_run(
    forwarded: tuple[RunningService, Sink, list[ReadableSpan]],
) -> None:
    running, sink, _ = forwarded
    assert running.total("costproc_cost_spans_total") == len(JOBS)
    assert running.total("costproc_forward_requests_total", result="sent") == len(sink.bodies)
    assert running.total("costproc_forward_requests_total", result="failed") == 0
    assert running.total("costproc_forward_retries_total") == 0
    assert running.total("costproc_forward_queue_capacity") == 1000
    assert running.total("costproc_forward_queue_length") == 0


# -- outages, permanent failures, deadlines --------------------------------------------


def test_grpc_outage_is_retried_until_delivered(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService]
) -> None:
    script = [(UNAVAILABLE, None), (UNAVAILABLE, None), (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.01)]
    script.append((grpc.StatusCode.ABORTED, None))
    sink = start_sink("grpc", script=script)
    running = serve(
        "grpc", endpoint("grpc", sink.port), headers={"x-api-key": "k1"}, cost_spans=False
    )
    bodies = [job_body(n) for n in range(1, 4)]
    client = RawClient(running)
    for payload in bodies:
        client.send(payload)
    client.close()
    wait_until(lambda: len(sink.bodies) == 3, "every request delivered")
    assert sorted(sink.bodies) == sorted(bodies)  # byte for byte
    assert all(h.get("x-api-key") == "k1" for h in sink.headers)
    assert running.total("costproc_forward_requests_total", result="failed") == 4
    assert running.total("costproc_forward_retries_total") == 4
    assert running.total("costproc_forward_requests_total", result="sent") == 3
    assert running.total("costproc_forward_dropped_total") == 0


@pytest.mark.parametrize("path", ["", "/v1/traces", "/v1/traces/"], ids=["base", "full", "slash"])
def test_http_outage_is_retried_until_delivered(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService], path: str
) -> None:
    sink = start_sink("http", script=[(503, None), (429, 0.0), (502, None), (504, None)])
    running = serve(
        "http", endpoint("http", sink.port, path), headers={"x-api-key": "k2"}, cost_spans=False
    )
    bodies = [job_body(n) for n in range(10, 13)]
    client = RawClient(running)
    for payload in bodies:
        client.send(payload)
    client.close()
    wait_until(lambda: len(sink.bodies) == 3, "every request delivered")
    assert sorted(sink.bodies) == sorted(bodies)
    for headers in sink.headers:
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["content-encoding"] == "gzip"
        assert headers["x-api-key"] == "k2"
    assert running.total("costproc_forward_retries_total") == 4
    assert running.total("costproc_forward_dropped_total") == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sink_started_late_gets_everything(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService], protocol: str
) -> None:
    port = free_port()
    running = serve(protocol, endpoint(protocol, port), compression="none")
    bodies = [job_body(n) for n in range(20, 23)]
    client = RawClient(running)
    for payload in bodies:
        client.send(payload)
    client.close()
    wait_total(running, "costproc_forward_retries_total", 3, "retries")
    sink = start_sink(protocol, port=port)
    # The three requests, then the three jobs' cost spans once they close.
    wait_until(lambda: len(spans_of(sink.requests(), SCOPE)) == 3, "cost spans delivered")
    assert sorted(b for b in sink.bodies if b in bodies) == sorted(bodies)
    assert running.total("costproc_forward_dropped_total") == 0


def test_otlp_json_received_is_forwarded_as_protobuf(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService]
) -> None:
    sink = start_sink("grpc")
    running = serve("grpc", endpoint("grpc", sink.port), cost_spans=False)
    sent = ExportTraceServiceRequest.FromString(job_body(60))
    payload = json.dumps(otlp_json(sent)).encode()
    post = urllib.request.Request(
        running.http_url, payload, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(post, timeout=5) as response:
        assert response.status == 200
    wait_until(lambda: len(sink.bodies) == 1, "the request forwarded")
    # OTLP/JSON carries hex ids; downstream gets the same request as protobuf.
    assert sink.requests() == [sent]


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The protobuf JSON mapping with OTLP's hex ids instead of base64."""
    doc = json_format.MessageToDict(request)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return doc


@pytest.mark.parametrize(("protocol", "refusal"), [("grpc", INVALID), ("http", 400)])
def test_permanent_failure_is_dropped_and_counted(
    start_sink: Callable[..., Sink],
    serve: Callable[..., RunningService],
    protocol: str,
    refusal: Any,
) -> None:
    sink = start_sink(protocol, always=refusal)
    running = serve(protocol, endpoint(protocol, sink.port), cost_spans=False)
    client = RawClient(running)
    for n in range(30, 33):
        client.send(job_body(n))
    client.close()
    dropped = "costproc_forward_dropped_total"
    wait_total(running, dropped, 3, "three drops", reason="non_retryable")
    assert running.total(dropped) == 3
    assert sink.calls == 3 and not sink.bodies
    assert running.total("costproc_forward_retries_total") == 0
    assert running.total("costproc_forward_requests_total", result="failed") == 3
    assert running.total("costproc_forward_requests_total", result="sent") == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_retry_deadline_drops_and_counts(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService], protocol: str
) -> None:
    sink = start_sink(protocol, always=UNAVAILABLE if protocol == "grpc" else 503)
    retry = {**FAST_RETRY, "max_elapsed_time": "150ms"}
    running = serve(
        protocol, endpoint(protocol, sink.port), retry_on_failure=retry, cost_spans=False
    )
    client = RawClient(running)
    for n in range(40, 42):
        client.send(job_body(n))
    client.close()
    dropped = "costproc_forward_dropped_total"
    wait_total(running, dropped, 2, "drops at the deadline", timeout=5, reason="retry_deadline")
    assert running.total(dropped) == 2
    assert running.total("costproc_forward_retries_total") >= 2
    assert running.total("costproc_forward_requests_total", result="sent") == 0
    assert sink.calls == running.total("costproc_forward_requests_total", result="failed")


def test_full_queue_refuses_upstream_and_client_retry_succeeds(
    start_sink: Callable[..., Sink], serve: Callable[..., RunningService]
) -> None:
    sink = start_sink("grpc")
    sink.hold()
    running = serve("grpc", endpoint("grpc", sink.port), queue_size=1, cost_spans=False)
    client = RawClient(running)
    bodies = [job_body(n) for n in range(50, 50 + SENDERS + 1)]
    for payload in bodies[:SENDERS]:
        client.send(payload)
    wait_until(lambda: sink.holding == SENDERS, "every sender busy")
    client.send(bodies[SENDERS])  # the one queue slot
    assert running.total("costproc_forward_queue_length") == 1
    with pytest.raises(grpc.RpcError) as refused:
        client.send(job_body(99))
    assert refused.value.code() == UNAVAILABLE
    client.close()

    # A real SDK exporter is refused too, and its own retry gets through once we drain.
    spans = sdk_spans()
    exporter = OTLPSpanExporter(endpoint=running.grpc_target, insecure=True, timeout=10)
    results: list[SpanExportResult] = []
    sender = threading.Thread(target=lambda: results.append(exporter.export(spans)))
    sender.start()
    refused_total = "costproc_requests_refused_total"
    wait_total(running, refused_total, 2, "the exporter refused", reason="forward_queue_full")
    sink.release()
    sender.join(timeout=15)
    exporter.shutdown()
    assert results == [SpanExportResult.SUCCESS]
    wait_until(lambda: len(sink.bodies) == SENDERS + 2, "everything delivered")
    assert set(bodies) <= set(sink.bodies)
    assert running.total("costproc_forward_dropped_total") == 0


def sdk_spans() -> list[ReadableSpan]:
    provider = TracerProvider(resource=Resource({"service.name": "checkout"}))
    captured = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    tracer = provider.get_tracer("t")
    tracer.start_span("late", attributes={"job.id": "late-1"}, start_time=T0).end(T0 + MS)
    provider.shutdown()
    return list(captured.get_finished_spans())


# -- the Forwarder on its own ----------------------------------------------------------


def forward_config(sink: Sink, protocol: str = "grpc", **kw: Any) -> ForwardConfig:
    retry = RetryConfig(initial_interval=0.005, max_interval=0.02, max_elapsed_time=10.0)
    return ForwardConfig(
        endpoint=endpoint(protocol, sink.port),
        protocol=protocol,
        tls=TLSClientConfig(insecure=True),
        timeout=2.0,
        retry=retry,
        **kw,
    )


def finished_job(n: int) -> JobResult:
    cost = Cost({"cpu": 0.25, "egress": 0.5}, cpu_seconds=2.0, egress_by_class={"internet": 8.0})
    return JobResult(
        f"job-{n}",
        Labels("t", "acme", "checkout"),
        "success",
        1,
        cost,
        1.0,
        n.to_bytes(16, "big"),
        root_span_id=(n + 1).to_bytes(8, "big"),
        table_version="v1",
        trace_ids=(n.to_bytes(16, "big"),),
        start_ns=T0,
        end_ns=T0 + 1000 * MS,
    )


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_cost_spans_are_batched_by_512(start_sink: Callable[..., Sink]) -> None:
    sink = start_sink("grpc")
    registry = CollectorRegistry()
    forwarder = Forwarder(forward_config(sink), registry, "EUR", random.Random(7))

    async def run() -> None:
        await forwarder.start()
        for n in range(MAX_BATCH + 88):
            forwarder.job_closed(finished_job(n))
        await until(lambda: len(sink.bodies) == 2)
        await forwarder.stop(2.0)

    asyncio.run(run())
    sizes = sorted(len(spans_of([r], SCOPE)) for r in sink.requests())
    assert sizes == [88, MAX_BATCH]
    spans = {s.trace_id: s for _, _, s in spans_of(sink.requests(), SCOPE)}
    assert spans[(5).to_bytes(16, "big")].parent_span_id == (6).to_bytes(8, "big")
    attrs = {a.key: value(a.value) for a in spans[(5).to_bytes(16, "big")].attributes}
    assert attrs == {
        "costproc.job.id": "job-5",
        "costproc.job.type": "t",
        "costproc.tenant": "acme",
        "costproc.job.outcome": "success",
        "costproc.job.attempts": 1,
        "costproc.cost.total": 0.75,
        "costproc.cost.cpu": 0.25,
        "costproc.cost.egress": 0.5,
        "costproc.usage.cpu_seconds": 2.0,
        "costproc.usage.memory_gb_seconds": 0.0,
        "costproc.usage.gpu_seconds": 0.0,
        "costproc.usage.egress_bytes": 8.0,
        "costproc.price_table.version": "v1",
        "costproc.currency": "EUR",
    }
    assert registry.get_sample_value("costproc_cost_spans_total") == MAX_BATCH + 88


def test_stop_counts_what_could_not_be_sent(start_sink: Callable[..., Sink]) -> None:
    sink = start_sink("grpc")
    sink.hold()
    registry = CollectorRegistry()
    forwarder = Forwarder(forward_config(sink, cost_spans=False), registry, "USD")

    async def run() -> None:
        await forwarder.start()
        for n in range(SENDERS + 2):
            forwarder.offer(job_body(n))
        await until(lambda: sink.holding == SENDERS)
        await forwarder.stop(0.1)
        forwarder.offer(job_body(99))  # after stop: counted, not lost silently

    asyncio.run(run())
    sink.release()
    dropped = registry.get_sample_value("costproc_forward_dropped_total", {"reason": "shutdown"})
    assert dropped == SENDERS + 3


def test_partial_success_counts_rejected_spans(start_sink: Callable[..., Sink]) -> None:
    sink = start_sink("http", rejected_spans=2)
    registry = CollectorRegistry()
    forwarder = Forwarder(forward_config(sink, "http"), registry, "USD")

    async def run() -> None:
        await forwarder.start()
        forwarder.offer(job_body(1))
        await until(lambda: len(sink.bodies) == 1)
        await forwarder.stop(1.0)

    asyncio.run(run())
    assert registry.get_sample_value("costproc_forward_spans_rejected_total") == 2
    assert registry.get_sample_value("costproc_forward_requests_total", {"result": "sent"}) == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mutual_tls_downstream(
    start_sink: Callable[..., Sink], tmp_path: Path, protocol: str
) -> None:
    pki = make_pki(tmp_path)
    sink = start_sink(protocol, pki=pki)
    tls = TLSClientConfig(
        ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    config = replace(forward_config(sink, protocol), tls=tls)
    if protocol == "http":
        config = replace(config, endpoint=f"https://127.0.0.1:{sink.port}")
    registry = CollectorRegistry()
    forwarder = Forwarder(config, registry, "USD")

    async def run() -> None:
        await forwarder.start()
        forwarder.offer(job_body(1))
        await until(lambda: len(sink.bodies) == 1)
        await forwarder.stop(1.0)

    asyncio.run(run())
    assert sink.bodies == [job_body(1)]
    assert registry.get_sample_value("costproc_forward_requests_total", {"result": "failed"}) == 0


def test_room_is_kept_for_cost_spans() -> None:
    config = ForwardConfig(
        endpoint="127.0.0.1:1", tls=TLSClientConfig(insecure=True), queue_size=20
    )
    forwarder = Forwarder(config, CollectorRegistry(), "USD")
    for n in range(18):
        assert forwarder.has_room()
        forwarder.offer(job_body(n))
    assert not forwarder.has_room()  # two slots left, kept for cost-span batches


# -- classification and backoff --------------------------------------------------------


def retry_trailer(seconds: float) -> tuple[tuple[str, bytes], ...]:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(seconds * 1e9))
    status = status_pb2.Status(code=8)
    status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),)


@pytest.mark.parametrize(
    ("code", "trailers", "retryable", "delay"),
    [
        (UNAVAILABLE, (), True, None),
        (grpc.StatusCode.DEADLINE_EXCEEDED, (), True, None),
        (grpc.StatusCode.ABORTED, (), True, None),
        (grpc.StatusCode.CANCELLED, (), True, None),
        (grpc.StatusCode.OUT_OF_RANGE, (), True, None),
        (grpc.StatusCode.DATA_LOSS, (), True, None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, retry_trailer(2.5), True, 2.5),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (), False, None),
        (UNAVAILABLE, retry_trailer(1.0), True, 1.0),
        (INVALID, (), False, None),
        (grpc.StatusCode.UNAUTHENTICATED, (), False, None),
        (grpc.StatusCode.PERMISSION_DENIED, (), False, None),
        (grpc.StatusCode.UNIMPLEMENTED, (), False, None),
        (grpc.StatusCode.INTERNAL, (), False, None),
        (UNAVAILABLE, (("grpc-status-details-bin", b"\xff\xff"),), True, None),
    ],
    ids=lambda x: x.name if isinstance(x, grpc.StatusCode) else None,
)
def test_grpc_failure_classification(
    code: grpc.StatusCode, trailers: Any, retryable: bool, delay: float | None
) -> None:
    result = grpc_failure(code, "no", trailers)
    assert (result.ok, result.retryable, result.retry_after) == (False, retryable, delay)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("Thu, 01 Jan 2026 00:00:07 GMT", 7.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds


@pytest.mark.parametrize(
    ("endpoint_", "url"),
    [
        ("http://h:4318", "http://h:4318/v1/traces"),
        ("http://h:4318/", "http://h:4318/v1/traces"),
        ("https://h/v1/traces", "https://h/v1/traces"),
        ("https://h/otlp", "https://h/otlp/v1/traces"),
    ],
)
def test_traces_url_appends_path_once(endpoint_: str, url: str) -> None:
    assert traces_url(endpoint_) == url


def test_backoff_is_full_jitter_capped_at_max_interval() -> None:
    retry = RetryConfig(initial_interval=1.0, max_interval=30.0, max_elapsed_time=300.0)
    rng = random.Random(1)
    for retries, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (500, 30.0)]:
        delays = [backoff(retry, retries, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling
