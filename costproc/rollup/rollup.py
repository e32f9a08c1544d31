"""Roll spans up to jobs (SPEC section 2).

    add(spans) -> resolve job (own ID, nearest ancestor, trace) -> attempt
      -> tick: quiet for completion_wait -> close attempt -> price -> sink.attempt_closed
      -> no open attempt and (a success or retry_window passed) -> sink.job_closed

A span without a job ID waits for its parent; once any ancestor's job is known, the
whole waiting subtree joins that job, so arrival order never matters. A span still
waiting after `max_wait` joins its trace's own job as `incomplete`. Every map here is
bounded: at `max_inflight_traces` traces or jobs, or `max_inflight_spans` span ids, the
oldest is closed early as `evicted` and counted.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable

from costproc.clock import Clock
from costproc.config.model import RollupConfig
from costproc.model import (
    EVICTED,
    FAILURE,
    INCOMPLETE,
    KIND_CONSUMER,
    KIND_SERVER,
    NOT_MEASURED,
    SUCCESS,
    AttemptResult,
    CostSink,
    JobResult,
    Labels,
    SpanRecord,
)
from costproc.price.pricer import Pricer
from costproc.rollup.state import AttemptState, JobState, TraceState

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
_LOCAL_ROOT_KINDS = (KIND_SERVER, KIND_CONSUMER)


class Rollup:
    """Groups spans into attempts and jobs and reports them priced to a `CostSink`.

    Not thread-safe: `add` and `tick` are called from one thread (the event loop).
    """

    def __init__(self, config: RollupConfig, pricer: Pricer, sink: CostSink, clock: Clock):
        self.config = config
        self.pricer = pricer
        self.sink = sink
        self.clock = clock
        self.traces: OrderedDict[bytes, TraceState] = OrderedDict()  # by last activity
        self.jobs: OrderedDict[str, JobState] = OrderedDict()  # by creation
        self.span_count = 0
        self._quiet: OrderedDict[AttemptState, None] = OrderedDict()  # open, by last arrival
        self._retrying: OrderedDict[JobState, None] = OrderedDict()  # by last attempt close
        self._idle: OrderedDict[bytes, float] = OrderedDict()  # compacted traces, by idle time
        self._waiting: deque[tuple[float, TraceState, SpanRecord]] = deque()
        self._waiting_count = 0
        self._idle_spans = 0  # span ids held by idle traces, which can go at no loss
        self.dropped_untagged = 0

    # -- intake ----------------------------------------------------------------

    def add(self, spans: Iterable[SpanRecord]) -> int:
        """Take decoded spans; returns how many were duplicates and ignored."""
        duplicates = 0
        now = self.clock.now()
        for span in spans:
            if not self._add_one(span, now):
                duplicates += 1
        self._enforce_span_bound()
        self.sink.jobs_inflight(len(self.jobs))
        return duplicates

    def _add_one(self, span: SpanRecord, now: float) -> bool:
        trace = self._trace(span.trace_id)
        if trace.knows(span.span_id):
            return False  # a resent span (exporter retry) must not count twice
        trace.spans[span.span_id] = span
        trace.size += 1
        if span.measured != NOT_MEASURED:
            trace.has_measured = True
        self.span_count += 1
        self.traces.move_to_end(span.trace_id)
        if self._idle.pop(span.trace_id, None) is not None:
            self._idle_spans -= trace.size - 1
        job = self._resolve(trace, span)
        if job is None:
            trace.waiting.setdefault(span.parent_id, []).append(span)
            self._waiting.append((now, trace, span))
            self._waiting_count += 1
        else:
            self._assign(trace, span, job, now)
            if trace.idle:  # only late or dropped spans arrived: nothing left open here
                self._set_idle(trace, now)
        return True

    def _trace(self, trace_id: bytes) -> TraceState:
        trace = self.traces.get(trace_id)
        if trace is None:
            while len(self.traces) >= self.config.max_inflight_traces:
                self._make_room("max_inflight_traces")
            trace = TraceState(trace_id)
            self.traces[trace_id] = trace
        return trace

    def _resolve(self, trace: TraceState, span: SpanRecord) -> str | None:
        """The span's job if it is known now (SPEC 2.1-2.3, 2.11), else None: it waits."""
        if span.job_id is not None:
            return span.job_id
        if not span.parent_id:
            return trace.job_id
        parent_job = trace.job_of(span.parent_id)
        if parent_job is not None:
            return parent_job
        if self.config.local_roots and (
            span.remote_parent
            or (span.kind in _LOCAL_ROOT_KINDS and not trace.knows(span.parent_id))
        ):
            return trace.job_id
        return None

    def _assign(self, trace: TraceState, span: SpanRecord, job: str, now: float) -> None:
        """Give `span` its job, then every child waiting on it, transitively."""
        span.job = job
        self._attach(trace, span, now)
        if not trace.waiting:  # the common case: parents came first
            return
        stack = [(child, child.job_id or job) for child in trace.waiting.pop(span.span_id, ())]
        self._waiting_count -= len(stack)
        while stack:
            current, current_job = stack.pop()
            current.job = current_job
            self._attach(trace, current, now)
            for child in trace.waiting.pop(current.span_id, ()):
                self._waiting_count -= 1
                stack.append((child, child.job_id or current_job))

    def _attach(self, trace: TraceState, span: SpanRecord, now: float) -> None:
        job_id = span.job
        assert job_id is not None
        if job_id == trace.job_id and span.job_id is None and self.config.untagged_traces == "drop":
            self.dropped_untagged += 1
            return
        attempt = trace.attempts.get(job_id)
        if attempt is not None and attempt.closed:
            self._late(attempt, span)
            return
        if attempt is None:
            attempt = AttemptState(trace, self._job(job_id), now)
            attempt.job.open.append(attempt)
            self._retrying.pop(attempt.job, None)
            trace.attempts[job_id] = attempt
            trace.open_attempts += 1
        attempt.spans.append(span)
        attempt.last_arrival = now
        self._quiet[attempt] = None
        self._quiet.move_to_end(attempt)

    def _job(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            while len(self.jobs) >= self.config.max_inflight_traces:
                self._evict_job(next(iter(self.jobs.values())), "max_inflight_jobs")
            job = JobState(job_id)
            self.jobs[job_id] = job
        return job

    def _late(self, attempt: AttemptState, span: SpanRecord) -> None:
        cost = self.pricer.price_late(span, attempt.covered)
        assert attempt.labels is not None
        self.sink.late_spans(attempt.labels, cost, 1)

    # -- time ------------------------------------------------------------------

    def tick(self, budget: int | None = None) -> bool:
        """Close whatever is due at the clock's current reading.

        With a `budget`, close at most that many attempts and return True if more are
        due, so the caller can let requests in between slices (a burst of closes would
        otherwise stall the receivers for its whole length).
        """
        now = self.clock.now()
        cfg = self.config
        while self._waiting and self._waiting[0][0] + cfg.max_wait <= now:
            _, trace, span = self._waiting.popleft()
            if span.job is None and self.traces.get(trace.trace_id) is trace:
                self._orphan(trace, span, now)
        self._compact_waiting()
        closed = 0
        while self._quiet:
            attempt = next(iter(self._quiet))
            if attempt.last_arrival + cfg.completion_wait > now:
                break
            if budget is not None and closed >= budget:
                self.sink.jobs_inflight(len(self.jobs))
                return True
            self._close_attempt(attempt, now)
            closed += 1
        while self._retrying:
            job = next(iter(self._retrying))
            if job.last_closed + cfg.retry_window > now:
                break
            self._close_job(job)
        while self._idle:
            trace_id, since = next(iter(self._idle.items()))
            if since + cfg.late_span_window > now:
                break
            self._drop_trace(self.traces[trace_id])
        self.sink.jobs_inflight(len(self.jobs))
        return False

    def flush(self) -> None:
        """Close everything open now, as at shutdown: nothing accepted is left unreported."""
        now = self.clock.now()
        for trace in list(self.traces.values()):
            self._orphan_all(trace, now)
        for attempt in list(self._quiet):
            self._close_attempt(attempt, now)
        for job in list(self._retrying):
            self._close_job(job)
        self.sink.jobs_inflight(len(self.jobs))

    def _orphan(self, trace: TraceState, span: SpanRecord, now: float) -> None:
        """A span waited `max_wait`: it has no ancestor; it joins the trace's own job."""
        siblings = trace.waiting.get(span.parent_id, [])
        siblings.remove(span)
        if not siblings:
            del trace.waiting[span.parent_id]
        self._waiting_count -= 1
        self._assign(trace, span, span.job_id or trace.job_id, now)
        attempt = trace.attempts.get(span.job or "")
        if attempt is not None and not attempt.closed:
            attempt.forced_outcome = INCOMPLETE

    def _orphan_all(self, trace: TraceState, now: float) -> None:
        while trace.waiting:
            parent_id = next(iter(trace.waiting))
            self._orphan(trace, trace.waiting[parent_id][0], now)

    def _compact_waiting(self) -> None:
        # Resolved spans stay in the deque until their max_wait; rebuild when mostly stale.
        if len(self._waiting) > 2 * self._waiting_count + 1024:
            self._waiting = deque(e for e in self._waiting if e[2].job is None)

    # -- closing ---------------------------------------------------------------

    def _close_attempt(self, attempt: AttemptState, now: float) -> None:
        trace, job = attempt.trace, attempt.job
        del self._quiet[attempt]
        attempt.closed = True
        trace.open_attempts -= 1
        job.open.remove(attempt)
        roots = _roots(attempt, trace)
        root = min(roots, key=lambda s: (s.start, s.span_id))
        attempt.labels = Labels(
            job_type=root.job_type or root.resource.job_type or UNKNOWN,
            tenant=root.tenant or root.resource.tenant or UNKNOWN,
            service=root.resource.service,
        )
        cost, attempt.covered = self.pricer.price_attempt(
            job.job_id, attempt.spans, trace.spans, carve=trace.needs_carve
        )
        result = AttemptResult(
            job.job_id,
            trace.trace_id,
            attempt.labels,
            attempt.forced_outcome or _outcome(roots),
            cost,
            root_span_id=root.span_id,
            table_version=root.table,
            start_ns=min(s.start for s in attempt.spans),
            end_ns=max(s.end for s in attempt.spans),
        )
        self.sink.attempt_closed(result)
        job.fold(result)
        if not job.open:
            if job.success is not None or self.config.retry_window <= 0 or job.evicted:
                self._close_job(job)
            else:
                job.last_closed = now
                self._retrying[job] = None
        if trace.idle and self.traces.get(trace.trace_id) is trace:
            self._set_idle(trace, now)

    def _set_idle(self, trace: TraceState, now: float) -> None:
        """Nothing is open in `trace`: keep only span -> job, for `late_span_window`."""
        trace.compact()
        if trace.trace_id not in self._idle:
            self._idle_spans += trace.size
        self._idle[trace.trace_id] = now
        self._idle.move_to_end(trace.trace_id)

    def _close_job(self, job: JobState) -> None:
        self._retrying.pop(job, None)
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]
        if job.evicted:
            outcome = EVICTED
        elif job.success is not None:
            outcome = SUCCESS
        elif job.failed:
            outcome = FAILURE
        else:
            outcome = INCOMPLETE
        deciding = job.success or job.last
        assert deciding is not None, "a job is created with its first attempt"
        self.sink.job_closed(
            JobResult(
                job.job_id,
                deciding.labels,
                outcome,
                job.attempts,
                job.cost,
                (job.end_ns - job.start_ns) / 1e9,
                deciding.trace_id,
                root_span_id=deciding.root_span_id,
                table_version=deciding.table_version,
                trace_ids=tuple(job.trace_ids),
                start_ns=job.start_ns,
                end_ns=job.end_ns,
            )
        )

    # -- bounds ----------------------------------------------------------------

    def _enforce_span_bound(self) -> None:
        while self.span_count > self.config.max_inflight_spans and len(self.traces) > 1:
            self._make_room("max_inflight_spans")

    def _make_room(self, reason: str) -> None:
        """Forget the oldest idle trace (nothing open: no loss), else evict an open one."""
        if self._idle:
            self._drop_trace(self.traces[next(iter(self._idle))])
        else:
            self._evict_trace(reason)

    def pressure(self) -> str | None:
        """The cap that open state is above the backpressure watermark of, if any."""
        cfg = self.config
        mark = cfg.backpressure_watermark
        if self.span_count - self._idle_spans >= mark * cfg.max_inflight_spans:
            return "max_inflight_spans"
        if len(self.traces) - len(self._idle) >= mark * cfg.max_inflight_traces:
            return "max_inflight_traces"
        if len(self.jobs) >= mark * cfg.max_inflight_traces:
            return "max_inflight_jobs"
        return None

    def _evict_trace(self, reason: str) -> None:
        """Close the least recently active trace early; its open jobs end as evicted."""
        trace = next(iter(self.traces.values()))
        now = self.clock.now()
        self._orphan_all(trace, now)
        jobs = [a.job for a in trace.attempts.values() if not a.closed]
        for job in jobs:
            self._evict_job(job, reason)
        self._drop_trace(trace)
        if jobs:
            log.warning(
                "evicted %d open job(s) (%s); raise rollup.%s or lower rollup.completion_wait",
                len(jobs),
                reason,
                "max_inflight_spans" if reason == "max_inflight_spans" else "max_inflight_traces",
            )

    def _evict_job(self, job: JobState, reason: str) -> None:
        now = self.clock.now()
        job.evicted = True
        for attempt in list(job.open):
            attempt.forced_outcome = EVICTED
            self._close_attempt(attempt, now)
        if self.jobs.get(job.job_id) is job:
            self._close_job(job)
        self.sink.jobs_evicted(reason, 1)

    def _drop_trace(self, trace: TraceState) -> None:
        # Attempts point back at their trace: unlink them so plain reference counting
        # frees the whole trace, and the cyclic collector has little to do.
        trace.attempts = {}
        if self.traces.get(trace.trace_id) is trace:
            del self.traces[trace.trace_id]
            self.span_count -= trace.size
        if self._idle.pop(trace.trace_id, None) is not None:
            self._idle_spans -= trace.size


def _roots(attempt: AttemptState, trace: TraceState) -> list[SpanRecord]:
    """The attempt's topmost spans: no parent among the attempt's own spans."""
    job_id = attempt.job.job_id
    return [
        s for s in attempt.spans if not s.parent_id or trace.job_of(s.parent_id) != job_id
    ] or attempt.spans


def _outcome(roots: list[SpanRecord]) -> str:
    """An attempt fails if any of its topmost spans failed (SPEC 2.6)."""
    for root in roots:
        if root.outcome == FAILURE or (root.outcome is None and root.error):
            return FAILURE
    return SUCCESS
