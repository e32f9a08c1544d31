"""Cost spans: one `costproc.job.cost` span per finished job, batched into OTLP requests.

Cost spans go into the job's own trace, as children of its job root. They carry no job
ID and have a parent, so were they ever fed back into costproc (a pipeline that loops)
they would join their job as late spans. They are sent on a resource with
`service.name: costproc` under the instrumentation scope `costproc`; a pipeline whose
output can reach costproc again must drop that scope on the way (for example a
collector filter processor on `instrumentation_scope.name == "costproc"`). Their
attribute names (`costproc.cost.*`, `costproc.usage.*`) differ from the usage attributes
costproc reads, so they never count as measured usage.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from costproc import __version__
from costproc.model import JobResult

SCOPE = "costproc"  # instrumentation scope and service.name of cost spans
COST_SPAN_NAME = "costproc.job.cost"
MAX_BATCH = 512  # cost spans per request, as the SDKs batch
COST_FLUSH_INTERVAL = 1.0  # seconds a cost span waits at most for its batch to fill
_SAMPLED = 0x01


def cost_span(job: JobResult, currency: str, span_id: bytes) -> Span:
    """The `costproc.job.cost` span: a child of the job root in the deciding attempt's trace."""
    return Span(
        trace_id=job.trace_id,
        span_id=span_id,
        parent_span_id=job.root_span_id,
        name=COST_SPAN_NAME,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=job.start_ns,
        end_time_unix_nano=job.end_ns,
        attributes=[KeyValue(key=k, value=_any(v)) for k, v in cost_attributes(job, currency)],
        flags=_SAMPLED,
    )


def cost_attributes(job: JobResult, currency: str) -> list[tuple[str, str | int | float]]:
    """The cost span's attributes: job, outcome, cost by component, usage, price table."""
    cost = job.cost
    components = [
        # A component called "total" would repeat the key of the total; the total wins.
        (f"costproc.cost.{name}", float(usd))
        for name, usd in sorted(cost.by_component.items())
        if name != "total"
    ]
    return [
        ("costproc.job.id", job.job_id),
        ("costproc.job.type", job.labels.job_type),
        ("costproc.tenant", job.labels.tenant),
        ("costproc.job.outcome", job.outcome),
        ("costproc.job.attempts", job.attempts),
        # float(): an empty sum is int 0, and each attribute should keep one type.
        ("costproc.cost.total", float(cost.total)),
        *components,
        ("costproc.usage.cpu_seconds", float(cost.cpu_seconds)),
        ("costproc.usage.memory_gb_seconds", float(cost.memory_gb_seconds)),
        ("costproc.usage.gpu_seconds", float(cost.gpu_seconds)),
        ("costproc.usage.egress_bytes", float(cost.egress_bytes)),
        ("costproc.price_table.version", job.table_version),
        ("costproc.currency", currency),
    ]


def _any(value: str | int | float) -> AnyValue:
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(double_value=value)


def cost_request(spans: list[Span]) -> bytes:
    """One ExportTraceServiceRequest body holding cost spans, under costproc's own resource."""
    service = KeyValue(key="service.name", value=AnyValue(string_value=SCOPE))
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[service]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name=SCOPE, version=__version__), spans=spans
                    )
                ],
            )
        ]
    )
    return bytes(request.SerializeToString())
