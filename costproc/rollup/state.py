"""The rollup's in-flight state: traces, the attempts inside them, and jobs across them."""

from __future__ import annotations

from costproc.model import (
    FAILURE,
    MAX_TRACE_IDS,
    SUCCESS,
    AttemptResult,
    Cost,
    Labels,
    SpanRecord,
)
from costproc.price.pricer import Covered


class AttemptState:
    """The spans of one job inside one trace, open until quiet for `completion_wait`."""

    __slots__ = (
        "closed",
        "covered",
        "forced_outcome",
        "job",
        "labels",
        "last_arrival",
        "spans",
        "trace",
    )

    def __init__(self, trace: TraceState, job: JobState, now: float):
        self.trace = trace
        self.job = job
        self.spans: list[SpanRecord] = []
        self.last_arrival = now
        self.closed = False
        # Set when the attempt cannot end normally: "incomplete" (orphans) or "evicted".
        self.forced_outcome: str | None = None
        # Filled at close, kept for late spans.
        self.labels: Labels | None = None
        self.covered: Covered = {}


class TraceState:
    """Everything known of one trace: its spans, the spans waiting for a parent, attempts.

    Once every attempt is closed and nothing waits, the trace is compacted: span
    records are dropped and only span id -> job remains, so late children still
    find their job for the retention window.
    """

    __slots__ = (
        "attempts",
        "has_measured",
        "open_attempts",
        "size",
        "span_jobs",
        "spans",
        "trace_id",
        "waiting",
    )

    def __init__(self, trace_id: bytes):
        self.trace_id = trace_id
        self.spans: dict[bytes, SpanRecord] = {}
        self.span_jobs: dict[bytes, str] = {}
        self.waiting: dict[bytes, list[SpanRecord]] = {}  # parent span id -> children
        self.attempts: dict[str, AttemptState] = {}
        self.open_attempts = 0
        self.size = 0  # span ids held, counted against max_inflight_spans
        self.has_measured = False  # some span measured its own usage

    @property
    def needs_carve(self) -> bool:
        """Whether a descendant may take instants from a job (another job, or measured)."""
        return self.has_measured or len(self.attempts) > 1

    @property
    def job_id(self) -> str:
        """The trace's own job: the trace ID in lowercase hex."""
        return self.trace_id.hex()

    @property
    def idle(self) -> bool:
        return self.open_attempts == 0 and not self.waiting

    def job_of(self, span_id: bytes) -> str | None:
        span = self.spans.get(span_id)
        if span is not None:
            return span.job
        return self.span_jobs.get(span_id)

    def knows(self, span_id: bytes) -> bool:
        return span_id in self.spans or span_id in self.span_jobs

    def compact(self) -> None:
        for span_id, span in self.spans.items():
            if span.job is not None:
                self.span_jobs[span_id] = span.job
        self.spans = {}
        for attempt in self.attempts.values():
            attempt.spans = []


class JobState:
    """One job across its attempts (one per trace), until it closes.

    Attempts are folded in as they close, so a job retried for hours holds the same
    few fields as a job tried once.
    """

    __slots__ = (
        "attempts",
        "cost",
        "end_ns",
        "evicted",
        "failed",
        "job_id",
        "last",
        "last_closed",
        "open",
        "start_ns",
        "success",
        "trace_ids",
    )

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.open: list[AttemptState] = []
        self.evicted = False
        self.attempts = 0
        self.cost = Cost()
        self.failed = False
        self.success: AttemptResult | None = None
        self.last: AttemptResult | None = None
        self.trace_ids: list[bytes] = []
        self.start_ns = 0
        self.end_ns = 0
        self.last_closed = 0.0

    def fold(self, result: AttemptResult) -> None:
        """Add a closed attempt: its cost, outcome and time span."""
        self.start_ns = min(self.start_ns, result.start_ns) if self.attempts else result.start_ns
        self.end_ns = max(self.end_ns, result.end_ns)
        self.attempts += 1
        self.cost.add(result.cost)
        self.last = result
        if result.outcome == SUCCESS and self.success is None:
            self.success = result
        self.failed = self.failed or result.outcome == FAILURE
        if len(self.trace_ids) < MAX_TRACE_IDS:
            self.trace_ids.append(result.trace_id)
