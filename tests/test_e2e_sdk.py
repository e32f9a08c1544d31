"""End to end: the OpenTelemetry Python SDK exports over OTLP/gRPC, Prometheus scrapes.

Every span has explicit start and end times, so busy time, and with it every expected
figure below, is computed by hand from the bundled price table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import RunningService
from grpc import Compression
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from costproc.config.model import Config

T0 = 1_767_229_200_000_000_000  # 2026-01-01T01:00:00Z, inside the bundled "2026-01" table
MS = 1_000_000
# What a bare client asks for, and what Prometheus itself sends.
OPENMETRICS_ACCEPT = {
    "openmetrics": "application/openmetrics-text",
    "prometheus": "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}

# Bundled config: checkout holds 2 cores and 4 GB and serves 8 jobs at once.
CPU_SHARE = 2 / 8  # cores per job
MEM_SHARE = 4 / 8  # GB per job
CPU_PER_CORE_SECOND = 0.031611 / 3600
MEM_PER_GB_SECOND = 0.004237 / 3600
INTERNET_PER_BYTE = 0.09 / 1e9
GPT4O_INPUT, GPT4O_OUTPUT = 2.50 / 1e6, 10.00 / 1e6

# Busy seconds per job (union of its spans on the one checkout instance).
BUSY = {"order": 1.2, "chat": 2.0, "payment": 0.5, "refund": 0.3}
INTERNET_BYTES = 500_000 + 1_500_000  # order: response body + explicit upload
SAME_ZONE_BYTES = 1_000_000  # order: cache write, priced 0
LLM_USD = 1200 * GPT4O_INPUT + 300 * GPT4O_OUTPUT
SPANS_SENT = 11


def resource_usd(busy: float) -> float:
    return busy * (CPU_SHARE * CPU_PER_CORE_SECOND + MEM_SHARE * MEM_PER_GB_SECOND)


JOB_USD = {
    "order": resource_usd(BUSY["order"]) + INTERNET_BYTES * INTERNET_PER_BYTE,
    "chat": resource_usd(BUSY["chat"]) + LLM_USD,
    "payment": resource_usd(BUSY["payment"]),
    "refund": resource_usd(BUSY["refund"]),
}


@dataclass(frozen=True)
class Sent:
    """What the workload emitted that the assertions need: trace ids by job type."""

    trace_ids: dict[str, str]


class Workload:
    """Emits spans through a real SDK pipeline with exact timestamps (ms after T0)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("costproc.e2e")
        self._ends: list[tuple[trace.Span, int]] = []

    def span(
        self,
        name: str,
        start_ms: int,
        end_ms: int,
        parent: trace.Span | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attrs: Mapping[str, Any] | None = None,
        error: bool = False,
    ) -> trace.Span:
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(
            name, context=context, kind=kind, attributes=attrs, start_time=T0 + start_ms * MS
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, "card declined"))
        self._ends.append((span, T0 + end_ms * MS))
        return span

    def run(self) -> Sent:
        ids = {
            "order": self._order(),
            "chat": self._chat(),
            "payment": self._payment(),
            "refund": self._refund(),
        }
        # Children end first, as they do in real code.
        for span, end in reversed(self._ends):
            span.end(end_time=end)
        return Sent({k: format(v.get_span_context().trace_id, "032x") for k, v in ids.items()})

    def _order(self) -> trace.Span:
        root = self.span(
            "POST /orders",
            0,
            1000,
            kind=SpanKind.SERVER,
            attrs={
                "job.id": "order-1001",
                "job.type": "order",
                "tenant": "acme",
                "http.response.body.size": 500_000,
            },
        )
        validate = self.span("validate", 100, 400, root)
        self.span("load customer", 200, 300, validate)
        # Fire-and-forget upload outlives the request: busy runs to 1200 ms. The explicit
        # egress attribute wins over the request body size.
        self.span(
            "upload receipt",
            500,
            1200,
            root,
            SpanKind.CLIENT,
            {
                "costproc.egress.bytes": 1_500_000,
                "http.request.body.size": 9_999,
                "server.address": "cdn.example.com",
            },
        )
        self.span(
            "cache write",
            950,
            1000,
            root,
            SpanKind.CLIENT,
            {"costproc.egress.bytes": 1_000_000, "server.address": "redis.svc.cluster.local"},
        )
        return root

    def _chat(self) -> trace.Span:
        root = self.span(
            "POST /chat",
            0,
            2000,
            kind=SpanKind.SERVER,
            attrs={"job.id": "chat-77", "job.type": "chat", "tenant": "acme"},
        )
        self.span(
            "chat gpt-4o",
            100,
            1600,
            root,
            SpanKind.CLIENT,
            {
                "gen_ai.request.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300,
            },
        )
        return root

    def _payment(self) -> trace.Span:
        root = self.span(
            "POST /pay",
            0,
            500,
            kind=SpanKind.SERVER,
            attrs={"job.id": "pay-9", "job.type": "payment", "tenant": "globex"},
            error=True,
        )
        self.span("charge", 100, 200, root)
        return root

    def _refund(self) -> trace.Span:
        # An int job ID and its decimal string are one job, not two.
        root = self.span(
            "POST /refund",
            0,
            300,
            kind=SpanKind.SERVER,
            attrs={"job.id": 4242, "job.type": "refund", "tenant": "globex"},
        )
        self.span("refund ledger", 50, 250, root, attrs={"job.id": "4242"})
        return root


@pytest.fixture(
    scope="module", params=[Compression.NoCompression, Compression.Gzip], ids=["plain", "gzip"]
)
def compression(request: pytest.FixtureRequest) -> Compression:
    value: Compression = request.param
    return value


@pytest.fixture(scope="module")
def running(
    make_config: Callable[[Mapping[str, Any]], Config],
    start_service: Callable[..., RunningService],
    compression: Compression,
) -> RunningService:
    return start_service(make_config({}))


@pytest.fixture(scope="module")
def sent(running: RunningService, compression: Compression) -> Iterator[Sent]:
    provider = TracerProvider(resource=Resource({"service.name": "checkout"}))
    exporter = OTLPSpanExporter(
        endpoint=running.grpc_target, insecure=True, timeout=10, compression=compression
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    result = Workload(provider).run()
    assert provider.force_flush(10_000)
    running.wait_for_total("costproc_jobs_total", 4)
    yield result
    provider.shutdown()


def labels(job: str, tenant: str, **more: str) -> dict[str, str]:
    return {"job_type": job, "tenant": tenant, "service": "checkout", **more}


TENANT = {"order": "acme", "chat": "acme", "payment": "globex", "refund": "globex"}
OUTCOME = {"order": "success", "chat": "success", "payment": "failure", "refund": "success"}


def test_jobs_by_outcome(running: RunningService, sent: Sent) -> None:
    jobs = {
        (s.labels["job_type"], s.labels["outcome"]): s.value
        for s in running.samples()
        if s.name == "costproc_jobs_total"
    }
    assert jobs == {(job, OUTCOME[job]): 1.0 for job in BUSY}
    assert running.total("costproc_jobs_total", outcome="success") == 3
    assert running.total("costproc_jobs_total", outcome="failure") == 1
    assert running.total("costproc_job_attempts_total") == 4
    assert running.total("costproc_jobs_inflight") == 0
    assert running.total("costproc_spans_received_total") == SPANS_SENT
    assert running.total("costproc_spans_rejected_total") == 0
    assert running.total("costproc_spans_late_total") == 0
    info = [s for s in running.samples() if s.name == "costproc_price_table_info"]
    assert [(s.labels, s.value) for s in info] == [({"version": "2026-01", "currency": "USD"}, 1)]


@pytest.mark.parametrize("job", sorted(BUSY))
def test_job_cost_histogram(running: RunningService, sent: Sent, job: str) -> None:
    by_job = labels(job, TENANT[job], outcome=OUTCOME[job])
    assert running.total("costproc_job_cost_usd_count", **by_job) == 1
    assert running.total("costproc_job_cost_usd_sum", **by_job) == pytest.approx(
        JOB_USD[job], rel=1e-9
    )
    cpu = running.total("costproc_job_cpu_seconds_sum", **labels(job, TENANT[job]))
    assert cpu == pytest.approx(BUSY[job] * CPU_SHARE, rel=1e-9)
    duration = running.total("costproc_job_duration_seconds_sum", **by_job)
    assert duration == pytest.approx(BUSY[job], rel=1e-9)


def test_totals(running: RunningService, sent: Sent) -> None:
    busy = sum(BUSY.values())
    assert running.total("costproc_job_cost_usd_count") == 4
    # Every job is observed in every per-job histogram, zeros included.
    assert running.total("costproc_job_gpu_seconds_count") == 4
    assert running.total("costproc_job_gpu_seconds_sum") == 0
    assert running.total("costproc_job_egress_bytes_count") == 4
    assert running.total("costproc_job_egress_bytes_sum") == INTERNET_BYTES + SAME_ZONE_BYTES
    assert running.total("costproc_job_cost_usd_sum") == pytest.approx(
        sum(JOB_USD.values()), rel=1e-9
    )
    components = {
        s.labels["component"]: s.value
        for s in running.samples()
        if s.name == "costproc_cost_usd_total" and s.labels.items() >= {"job_type": "order"}.items()
    }
    assert set(components) == {"cpu", "memory", "egress"}
    for component, want in {
        "cpu": busy * CPU_SHARE * CPU_PER_CORE_SECOND,
        "memory": busy * MEM_SHARE * MEM_PER_GB_SECOND,
        "egress": INTERNET_BYTES * INTERNET_PER_BYTE,
        "llm_tokens": LLM_USD,
    }.items():
        got = running.total("costproc_cost_usd_total", component=component)
        assert got == pytest.approx(want, rel=1e-9), component
    assert running.total("costproc_cost_usd_total") == pytest.approx(
        sum(JOB_USD.values()), rel=1e-9
    )


def test_egress_by_class(running: RunningService, sent: Sent) -> None:
    egress = {
        (s.labels["job_type"], s.labels["class"]): s.value
        for s in running.samples()
        if s.name == "costproc_egress_bytes_total"
    }
    assert egress == {
        ("order", "internet"): INTERNET_BYTES,
        ("order", "same_zone"): SAME_ZONE_BYTES,
    }


def test_failed_attempt_cost(running: RunningService, sent: Sent) -> None:
    failed = [s for s in running.samples() if s.name == "costproc_failed_attempt_cost_usd_total"]
    assert [s.labels for s in failed] == [labels("payment", "globex")]
    assert failed[0].value == pytest.approx(JOB_USD["payment"], rel=1e-9)


@pytest.mark.parametrize("accept", OPENMETRICS_ACCEPT.values(), ids=OPENMETRICS_ACCEPT.keys())
@pytest.mark.parametrize("job", sorted(BUSY))
def test_openmetrics_exemplar_carries_trace_id(
    running: RunningService, sent: Sent, job: str, accept: str
) -> None:
    text = running.scrape(accept=accept)
    buckets = [
        s
        for family in parse_om(text)
        for s in family.samples
        if s.name == "costproc_job_cost_usd_bucket" and s.labels["job_type"] == job
    ]
    exemplars = [s.exemplar for s in buckets if s.exemplar is not None]
    assert len(exemplars) == 1
    assert exemplars[0].labels == {"trace_id": sent.trace_ids[job]}
    assert exemplars[0].value == pytest.approx(JOB_USD[job], rel=1e-9)
