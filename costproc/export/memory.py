"""An in-memory `CostSink` that keeps everything it is told: a test double that ships."""

from __future__ import annotations

from collections import Counter

from costproc.model import AttemptResult, Cost, JobResult, Labels


class MemorySink:
    """Records attempts, jobs, late spans and evictions in lists, for tests and tools."""

    def __init__(self) -> None:
        self.attempts: list[AttemptResult] = []
        self.jobs: list[JobResult] = []
        self.late: list[tuple[Labels, Cost, int]] = []
        self.evicted: Counter[str] = Counter()
        self.inflight = 0

    def attempt_closed(self, attempt: AttemptResult) -> None:
        self.attempts.append(attempt)

    def job_closed(self, job: JobResult) -> None:
        self.jobs.append(job)

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        self.late.append((labels, cost, count))

    def jobs_evicted(self, reason: str, count: int) -> None:
        self.evicted[reason] += count

    def jobs_inflight(self, count: int) -> None:
        self.inflight = count

    def job(self, job_id: str) -> JobResult:
        """The one finished job with this ID (fails if there is not exactly one)."""
        found = [j for j in self.jobs if j.job_id == job_id]
        if len(found) != 1:
            raise LookupError(f"{len(found)} finished jobs with id {job_id!r}")
        return found[0]
