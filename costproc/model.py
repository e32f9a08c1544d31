"""The records that flow between the stages: receive -> roll up -> price -> export.

Decoding turns OTLP protobuf into these compact records once, at the edge; nothing
downstream ever sees a protobuf object. Records are plain slotted classes so that a
few hundred thousand of them in flight stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Usage kinds estimated from allocation x busy time. Index into per-kind tuples.
CPU, MEMORY, GPU = 0, 1, 2
RESOURCE_KINDS: tuple[str, str, str] = ("cpu", "memory", "gpu")

# OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 2, 3, 4, 5

# A span that measured none of cpu, memory, gpu (shared: compared on the hot path).
NOT_MEASURED: tuple[None, None, None] = (None, None, None)

# OTLP attempt and job outcomes.
SUCCESS, FAILURE, INCOMPLETE, EVICTED = "success", "failure", "incomplete", "evicted"


class Rates:
    """What one second of busy time costs on one instance under one price table.

    `usage[k]` is the share of the instance's allocation of kind k a job holds
    (allocation / concurrency); `price[k]` is the price per unit of that usage
    (core-second, GB-second, GPU-second). `measured_price` prices measured usage.
    Instances of this class are shared and compared by identity.
    """

    __slots__ = ("price", "usage")

    def __init__(self, usage: tuple[float, float, float], price: tuple[float, float, float]):
        self.usage = usage
        self.price = price


class Resource:
    """One OTLP resource, resolved once per request: who ran the spans and what it holds."""

    __slots__ = (
        "allocation",
        "concurrency",
        "instance",
        "job_id",
        "job_type",
        "override_attrs",
        "rates_by_table",
        "service",
        "tenant",
    )

    def __init__(
        self,
        service: str,
        instance: str,
        allocation: tuple[float, float, float],
        concurrency: float,
        job_id: str | None = None,
        job_type: str | None = None,
        tenant: str | None = None,
        override_attrs: dict[str, str] | None = None,
    ):
        self.service = service
        self.instance = instance
        self.allocation = allocation
        self.concurrency = concurrency
        self.job_id = job_id
        self.job_type = job_type
        self.tenant = tenant
        # Only the resource attributes that some price override looks at.
        self.override_attrs = override_attrs or {}
        # Price table version -> Rates, filled lazily by the price book.
        self.rates_by_table: dict[str, Rates] = {}


class SpanRecord:
    """One decoded span with the usage it reports; everything the later stages need.

    `measured[k]` is the measured usage of kind k, or None when the span does not
    report it (then it is estimated from busy time). `metered` holds (component,
    cost) pairs already priced by the table in force at the span's end, `egress`
    the span's egress bytes and class. `job` is filled in by the rollup once known.
    """

    __slots__ = (
        "egress_bytes",
        "egress_class",
        "end",
        "error",
        "job",
        "job_id",
        "job_type",
        "kind",
        "measured",
        "metered",
        "outcome",
        "parent_id",
        "remote_parent",
        "resource",
        "span_id",
        "start",
        "table",
        "tenant",
        "trace_id",
    )

    def __init__(
        self,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes,
        start: int,
        end: int,
        resource: Resource,
        table: str,
        kind: int = 0,
        error: bool = False,
        remote_parent: bool = False,
        job_id: str | None = None,
        job_type: str | None = None,
        tenant: str | None = None,
        outcome: str | None = None,
        measured: tuple[float | None, float | None, float | None] = NOT_MEASURED,
        egress_bytes: float = 0.0,
        egress_class: str = "",
        metered: tuple[tuple[str, float], ...] = (),
    ):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.start = start
        self.end = end
        self.resource = resource
        self.table = table
        self.kind = kind
        self.error = error
        self.remote_parent = remote_parent
        self.job_id = job_id
        self.job_type = job_type
        self.tenant = tenant
        self.outcome = outcome
        self.measured = measured
        self.egress_bytes = egress_bytes
        self.egress_class = egress_class
        self.metered = metered
        self.job: str | None = None

    def __repr__(self) -> str:
        return (
            f"SpanRecord(span={self.span_id.hex()}, parent={self.parent_id.hex()}, "
            f"job={self.job or self.job_id})"
        )


@dataclass(frozen=True, slots=True)
class Labels:
    """The labels a job's figures are exported under (before cardinality caps)."""

    job_type: str
    tenant: str
    service: str


@dataclass(slots=True)
class Cost:
    """Priced usage of some spans: cost by component, usage, egress bytes by class."""

    by_component: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    memory_gb_seconds: float = 0.0
    gpu_seconds: float = 0.0
    egress_by_class: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.by_component.values())

    @property
    def egress_bytes(self) -> float:
        return sum(self.egress_by_class.values())

    def add(self, other: Cost) -> None:
        for name, usd in other.by_component.items():
            self.by_component[name] = self.by_component.get(name, 0.0) + usd
        for cls, n in other.egress_by_class.items():
            self.egress_by_class[cls] = self.egress_by_class.get(cls, 0.0) + n
        self.cpu_seconds += other.cpu_seconds
        self.memory_gb_seconds += other.memory_gb_seconds
        self.gpu_seconds += other.gpu_seconds


MAX_TRACE_IDS = 32  # trace ids kept per job for records; a retry storm keeps the first ones


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One closed attempt: the spans of one job inside one trace, priced."""

    job_id: str
    trace_id: bytes
    labels: Labels
    outcome: str
    cost: Cost
    root_span_id: bytes = b""  # the job root: the earliest-starting topmost span
    table_version: str = ""  # the price table in force at the job root's end
    start_ns: int = 0
    end_ns: int = 0


@dataclass(frozen=True, slots=True)
class JobResult:
    """One finished job: all its attempts summed, labelled by the deciding attempt."""

    job_id: str
    labels: Labels
    outcome: str
    attempts: int
    cost: Cost
    duration_seconds: float
    trace_id: bytes  # of the deciding attempt; also the exemplar
    root_span_id: bytes = b""  # the deciding attempt's job root
    table_version: str = ""
    trace_ids: tuple[bytes, ...] = ()  # every attempt's trace, first MAX_TRACE_IDS of them
    start_ns: int = 0
    end_ns: int = 0


class CostSink(Protocol):
    """Where the rollup reports what it closed. Called from the event loop; must not block."""

    def attempt_closed(self, attempt: AttemptResult) -> None:
        """An attempt closed: count it and add its cost and egress to the totals."""

    def job_closed(self, job: JobResult) -> None:
        """A job finished: observe it in every per-job histogram."""

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        """Spans arrived after their attempt closed: add their cost, count them."""

    def jobs_evicted(self, reason: str, count: int) -> None:
        """Jobs were closed early to keep state bounded."""

    def jobs_inflight(self, count: int) -> None:
        """The number of open jobs changed."""


class IntakeSink(Protocol):
    """Where the receiver reports what it decoded and rejected."""

    def spans_received(self, count: int) -> None:
        """Spans decoded from requests, rejected ones included."""

    def spans_rejected(self, reason: str, count: int) -> None:
        """Spans rejected, by reason."""

    def spans_dropped(self, reason: str, count: int) -> None:
        """Accepted spans deliberately not rolled up (duplicates, untagged in drop mode)."""

    def requests_refused(self, reason: str) -> None:
        """A request was refused with a retryable status (backpressure)."""
