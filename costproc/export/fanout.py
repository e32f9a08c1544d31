"""Send what the rollup closes to several sinks (metrics, and e.g. the demo's table)."""

from __future__ import annotations

from collections.abc import Sequence

from costproc.model import AttemptResult, Cost, CostSink, JobResult, Labels


class FanOut:
    """A `CostSink` that forwards every call to each of `sinks`, in order."""

    def __init__(self, sinks: Sequence[CostSink]):
        self.sinks = tuple(sinks)

    def attempt_closed(self, attempt: AttemptResult) -> None:
        for sink in self.sinks:
            sink.attempt_closed(attempt)

    def job_closed(self, job: JobResult) -> None:
        for sink in self.sinks:
            sink.job_closed(job)

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        for sink in self.sinks:
            sink.late_spans(labels, cost, count)

    def jobs_evicted(self, reason: str, count: int) -> None:
        for sink in self.sinks:
            sink.jobs_evicted(reason, count)

    def jobs_inflight(self, count: int) -> None:
        for sink in self.sinks:
            sink.jobs_inflight(count)
