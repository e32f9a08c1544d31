"""Bad input over real OTLP/gRPC against a started Service: reject, count, keep serving.

The services here run on a fake clock: a test advances it past `completion_wait` and
waits (bounded) for the next tick to close what it sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from conftest import RunningService
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from otlp import S, request, span_id

from costproc.clock import FakeClock
from costproc.config.model import Config
from costproc.receive.decode import MAX_LABEL_CHARS

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
CHECKOUT = {"service.name": "checkout"}  # bundled config: 2 cores, 4 GB, concurrency 8
CPU_USD = 0.031611 / 3600 * 2 / 8  # per busy second of one checkout job
MEM_USD = 0.004237 / 3600 * 4 / 8
INTERNET_PER_BYTE = 0.09 / 1e9


class Client:
    """TraceService/Export on raw bytes, so a test can send what no SDK would."""

    def __init__(self, running: RunningService, clock: FakeClock) -> None:
        self.running = running
        self.clock = clock
        self.channel = grpc.insecure_channel(running.grpc_target)
        self._export = self.channel.unary_unary(
            EXPORT,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )

    def export(self, payload: bytes | ExportTraceServiceRequest) -> ExportTraceServiceResponse:
        if isinstance(payload, ExportTraceServiceRequest):
            payload = payload.SerializeToString()
        response: ExportTraceServiceResponse = self._export(payload, timeout=10)
        return response

    def close_jobs(self, jobs: float) -> None:
        """Move past completion_wait and wait until `jobs` jobs have finished in all."""
        self.clock.advance(1.0)
        self.running.wait_for_total("costproc_jobs_total", jobs)


@pytest.fixture
def start_client(
    make_config: Callable[[Mapping[str, Any]], Config],
    start_service: Callable[..., RunningService],
) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def start(overlay: Mapping[str, Any] | None = None) -> Client:
        clock = FakeClock()
        client = Client(start_service(make_config(overlay or {}), clock), clock)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.channel.close()


@pytest.fixture
def client(start_client: Callable[..., Client]) -> Client:
    return start_client()


def good_job(trace: int, job_id: str) -> list[S]:
    """One checkout job: a 1 s SERVER root and a nested child, 1000 response bytes."""
    return [
        S(
            trace,
            1,
            None,
            0,
            1000,
            {"job.id": job_id, "http.response.body.size": 1000},
            kind="server",
            resource=CHECKOUT,
        ),
        S(trace, 2, 1, 100, 200, resource=CHECKOUT),
    ]


def good_job_usd() -> float:
    return CPU_USD + MEM_USD + 1000 * INTERNET_PER_BYTE


# -- undecodable requests ------------------------------------------------------------


GOOD_BODY = request(good_job(1, "before")).SerializeToString()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not a protobuf at all", id="text"),
        pytest.param(b"\xff\xff\xff\xff\xff", id="unterminated-varint"),
        pytest.param(b"\x0a\x10\x0a", id="length-past-end"),
        pytest.param(GOOD_BODY[: len(GOOD_BODY) - 7], id="truncated-request"),
        pytest.param(GOOD_BODY[: len(GOOD_BODY) // 2], id="cut-in-half"),
    ],
)
def test_undecodable_request_is_invalid_argument(client: Client, payload: bytes) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.export(payload)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ExportTraceServiceRequest" in (raised.value.details() or "")
    assert client.running.total("costproc_spans_received_total") == 0

    response = client.export(request(good_job(2, "after")))
    assert not response.HasField("partial_success")
    assert client.running.total("costproc_spans_received_total") == 2
    client.close_jobs(1)
    assert client.running.total("costproc_jobs_total", outcome="success") == 1


# -- spans that break a validation rule ---------------------------------------------


def set_trace_id(span: Span) -> None:
    span.trace_id = span.trace_id[1:]


def zero_trace_id(span: Span) -> None:
    span.trace_id = bytes(16)


def set_span_id(span: Span) -> None:
    span.span_id = span.span_id[1:]


@dataclass(frozen=True)
class Bad:
    """Spans that must be rejected with `reason`, each a job of its own if wrongly kept."""

    spans: list[S]
    reason: str
    mutate: Callable[[Span], None] | None = None
    count: int = 1


def bad_root(trace: int, attrs: Mapping[str, Any] | None = None, **kw: Any) -> S:
    return S(trace, 1, None, 0, 500, {"job.id": f"bad-{trace}", **(attrs or {})}, **kw)


BAD = {
    "15-byte-trace-id": Bad([bad_root(101, resource=CHECKOUT)], "invalid_trace_id", set_trace_id),
    "zero-trace-id": Bad([bad_root(113, resource=CHECKOUT)], "invalid_trace_id", zero_trace_id),
    "7-byte-span-id": Bad([bad_root(102, resource=CHECKOUT)], "invalid_span_id", set_span_id),
    "end-before-start": Bad(
        [S(103, 1, None, 500, 499, {"job.id": "bad-103"}, resource=CHECKOUT)], "end_before_start"
    ),
    "nan-cpu-seconds": Bad(
        [bad_root(104, {"costproc.cpu.seconds": math.nan}, resource=CHECKOUT)], "invalid_usage"
    ),
    "negative-cpu-seconds": Bad(
        [bad_root(105, {"costproc.cpu.seconds": -0.5}, resource=CHECKOUT)], "invalid_usage"
    ),
    "negative-int-cpu-seconds": Bad(
        [bad_root(106, {"costproc.cpu.seconds": -3}, resource=CHECKOUT)], "invalid_usage"
    ),
    "string-cpu-seconds": Bad(
        [bad_root(107, {"costproc.cpu.seconds": "0.5"}, resource=CHECKOUT)], "invalid_usage"
    ),
    "bool-gpu-seconds": Bad(
        [bad_root(114, {"costproc.gpu.seconds": True}, resource=CHECKOUT)], "invalid_usage"
    ),
    "nan-egress-bytes": Bad(
        [bad_root(115, {"costproc.egress.bytes": math.nan}, resource=CHECKOUT)], "invalid_usage"
    ),
    "infinite-memory-gb-seconds": Bad(
        [bad_root(108, {"costproc.memory.gb_seconds": math.inf}, resource=CHECKOUT)],
        "invalid_usage",
    ),
    "negative-response-size-on-server": Bad(
        [bad_root(109, {"http.response.body.size": -10}, kind="server", resource=CHECKOUT)],
        "invalid_usage",
    ),
    "negative-input-tokens-on-metered-call": Bad(
        [
            bad_root(
                110,
                {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": -100},
                kind="client",
                resource=CHECKOUT,
            )
        ],
        "invalid_usage",
    ),
    "zero-concurrency-resource": Bad(
        [
            bad_root(111, resource={**CHECKOUT, "costproc.concurrency": 0}),
            S(111, 2, 1, 100, 200, resource={**CHECKOUT, "costproc.concurrency": 0}),
        ],
        "invalid_allocation",
        count=2,
    ),
    "nan-concurrency-resource": Bad(
        [bad_root(116, resource={**CHECKOUT, "costproc.concurrency": math.nan})],
        "invalid_allocation",
    ),
    "negative-cpu-allocation-resource": Bad(
        [bad_root(112, resource={**CHECKOUT, "costproc.cpu.allocated": -2})],
        "invalid_allocation",
    ),
}


def build(good: list[S], bad: list[Bad]) -> ExportTraceServiceRequest:
    """One request of good and bad spans, the bad ones' ids damaged where asked."""
    req = request(good + [s for b in bad for s in b.spans])
    damage = {(b.spans[0].trace, span_id(b.spans[0].span)): b.mutate for b in bad if b.mutate}
    for resource_spans in req.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                mutate = damage.get((int.from_bytes(span.trace_id, "big"), span.span_id))
                if mutate is not None:
                    mutate(span)
    return req


def assert_good_job_priced(client: Client, jobs: float = 1) -> None:
    running = client.running
    client.close_jobs(jobs)
    assert running.total("costproc_jobs_total") == jobs
    cost = running.total("costproc_cost_usd_total")
    assert cost == pytest.approx(jobs * good_job_usd(), rel=1e-9)
    assert running.total("costproc_egress_bytes_total", **{"class": "internet"}) == jobs * 1000


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_span_rejected_rest_accepted(client: Client, case: Bad) -> None:
    response = client.export(build(good_job(1, "good-1"), [case]))

    assert response.partial_success.rejected_spans == case.count
    assert case.reason in response.partial_success.error_message
    running = client.running
    assert running.total("costproc_spans_rejected_total", reason=case.reason) == case.count
    assert running.total("costproc_spans_rejected_total") == case.count
    assert running.total("costproc_spans_received_total") == 2 + case.count
    assert_good_job_priced(client)


def test_mixed_request_counts_every_reason(client: Client) -> None:
    good = good_job(1, "good-1") + good_job(2, "good-2")
    response = client.export(build(good, list(BAD.values())))

    by_reason: dict[str, int] = {}
    for case in BAD.values():
        by_reason[case.reason] = by_reason.get(case.reason, 0) + case.count
    rejected = sum(by_reason.values())
    assert response.partial_success.rejected_spans == rejected
    message = response.partial_success.error_message
    for reason, count in by_reason.items():
        assert reason in message
        assert client.running.total("costproc_spans_rejected_total", reason=reason) == count
    assert client.running.total("costproc_spans_received_total") == len(good) + rejected
    assert_good_job_priced(client, jobs=2)


# -- attributes that do not count are not validated ---------------------------------


IGNORED: dict[str, tuple[str, dict[str, Any]]] = {
    "negative-request-size-on-server": ("server", {"http.request.body.size": -5}),
    "string-request-size-on-server": ("server", {"http.request.body.size": "lots"}),
    "negative-response-size-on-client": ("client", {"http.response.body.size": -5}),
    "negative-message-size-on-consumer": ("consumer", {"messaging.message.body.size": -1}),
    "explicit-egress-wins-over-bad-body-size": (
        "server",
        {"costproc.egress.bytes": 1000, "http.response.body.size": -5},
    ),
    "negative-tokens-of-unpriced-model": (
        "client",
        {"gen_ai.request.model": "in-house-llm", "gen_ai.usage.input_tokens": -1},
    ),
}


@pytest.mark.parametrize(("kind", "attrs"), IGNORED.values(), ids=IGNORED.keys())
def test_attribute_that_does_not_count_is_ignored(
    client: Client, kind: str, attrs: dict[str, Any]
) -> None:
    explicit = attrs.get("costproc.egress.bytes", 0)
    spans = [S(1, 1, None, 0, 1000, {"job.id": "j", **attrs}, kind=kind, resource=CHECKOUT)]

    response = client.export(request(spans))

    assert not response.HasField("partial_success")
    assert client.running.total("costproc_spans_rejected_total") == 0
    client.close_jobs(1)
    assert client.running.total("costproc_egress_bytes_total") == explicit
    assert client.running.total("costproc_cost_usd_total") == pytest.approx(
        CPU_USD + MEM_USD + explicit * INTERNET_PER_BYTE, rel=1e-9
    )


# -- size -----------------------------------------------------------------------------


def test_huge_attribute_accepted_and_label_truncated(start_client: Callable[..., Client]) -> None:
    client = start_client({"receivers": {"otlp": {"grpc": {"max_recv_msg_size_mib": 4}}}})
    job_type = "nightly-report-" + "x" * 1_000_000
    attrs: dict[str, Any] = {f"app.attr.{i}": f"value-{i}" for i in range(20_000)}
    attrs |= {"job.id": "big-1", "job.type": job_type, "tenant": "t" * 5000}
    spans = [S(1, 1, None, 0, 1000, attrs, kind="server", resource=CHECKOUT)]
    payload = request(spans).SerializeToString()
    assert len(payload) > 1_000_000

    response = client.export(payload)

    assert not response.HasField("partial_success")
    client.close_jobs(1)
    jobs = [s for s in client.running.samples() if s.name == "costproc_jobs_total"]
    assert len(jobs) == 1
    assert 0 < MAX_LABEL_CHARS <= 1024
    assert jobs[0].labels["job_type"] == job_type[:MAX_LABEL_CHARS]
    assert jobs[0].labels["tenant"] == "t" * MAX_LABEL_CHARS
    assert client.running.total("costproc_cost_usd_total") == pytest.approx(
        CPU_USD + MEM_USD, rel=1e-9
    )


def test_request_over_max_size_is_resource_exhausted(
    start_client: Callable[..., Client],
) -> None:
    client = start_client({"receivers": {"otlp": {"grpc": {"max_recv_msg_size_mib": 1}}}})
    big = [S(1, 1, None, 0, 1000, {"job.id": "big", "blob": "x" * (1024 * 1024)})]

    with pytest.raises(grpc.RpcError) as raised:
        client.export(request(big))

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.running.total("costproc_spans_received_total") == 0
    response = client.export(request(good_job(2, "after")))
    assert not response.HasField("partial_success")
    assert_good_job_priced(client)
