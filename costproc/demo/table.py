"""The demo's live table: a `CostSink` keeping per-job-type figures, rendered as text.

JobResult / AttemptResult -> DemoTable (per job type) -> rows -> render
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from costproc.model import SUCCESS, AttemptResult, Cost, JobResult, Labels

WINDOW = 1000  # recent jobs per job type behind the table's quantiles and ratios
MAX_ROWS = 20  # job types shown before the rest fold into one row

_OTHER_TYPES = "(other)"


@dataclass(frozen=True, slots=True)
class _Finished:
    cost: float
    success: bool
    attempts: int


class _TypeStats:
    """One job type: totals since start, and its last `window` finished jobs."""

    def __init__(self, window: int):
        self.jobs = 0
        self.spend = 0.0
        self.recent: deque[_Finished] = deque(maxlen=window)


@dataclass(frozen=True, slots=True)
class Row:
    """One job type's line in the table; None where there is nothing to show yet."""

    job_type: str
    jobs: int
    success_ratio: float | None
    p50: float | None
    p95: float | None
    cost_per_success: float | None
    retries_per_job: float | None
    spend: float


_COLUMNS = (
    ("job type", "<14"),
    ("jobs", ">7"),
    ("success", ">8"),
    ("p50/job", ">12"),
    ("p95/job", ">12"),
    ("$/success", ">12"),
    ("retries", ">8"),
    ("spend", ">12"),
)


class DemoTable:
    """A `CostSink` that keeps per-job-type figures for the demo's table and renders it.

    Memory is bounded: at most `max_rows` job types (the rest share one row), each with
    a window of its last `window` jobs.
    """

    def __init__(self, window: int = WINDOW, max_rows: int = MAX_ROWS):
        self.window = window
        self.max_rows = max_rows
        self.late_spans_count = 0
        self.evicted = 0
        self.inflight = 0
        self._types: dict[str, _TypeStats] = {}

    def attempt_closed(self, attempt: AttemptResult) -> None:
        self._stats(attempt.labels).spend += attempt.cost.total

    def job_closed(self, job: JobResult) -> None:
        stats = self._stats(job.labels)
        stats.jobs += 1
        stats.recent.append(_Finished(job.cost.total, job.outcome == SUCCESS, job.attempts))

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        self._stats(labels).spend += cost.total
        self.late_spans_count += count

    def jobs_evicted(self, reason: str, count: int) -> None:
        self.evicted += count

    def jobs_inflight(self, count: int) -> None:
        self.inflight = count

    def _stats(self, labels: Labels) -> _TypeStats:
        name = labels.job_type
        if name not in self._types and len(self._types) >= self.max_rows - 1:
            name = _OTHER_TYPES
        stats = self._types.get(name)
        if stats is None:
            stats = self._types[name] = _TypeStats(self.window)
        return stats

    def rows(self) -> list[Row]:
        """One row per job type, by name."""
        return [_row(name, self._types[name]) for name in sorted(self._types)]

    def render(self) -> list[str]:
        """The table's lines: a header, one line per job type, a total."""
        rows = self.rows()
        lines = [_line([name for name, _ in _COLUMNS])]
        lines += [_line(_cells(row)) for row in rows]
        jobs, spend = sum(r.jobs for r in rows), sum(r.spend for r in rows)
        lines.append(_line(["all", str(jobs), "", "", "", "", "", format_usd(spend)]))
        return lines


def _row(name: str, stats: _TypeStats) -> Row:
    recent = stats.recent
    if not recent:
        return Row(name, stats.jobs, None, None, None, None, None, stats.spend)
    costs = sorted(job.cost for job in recent)
    successes = sum(job.success for job in recent)
    return Row(
        job_type=name,
        jobs=stats.jobs,
        success_ratio=successes / len(recent),
        p50=quantile(costs, 0.5),
        p95=quantile(costs, 0.95),
        cost_per_success=sum(costs) / successes if successes else None,
        retries_per_job=sum(job.attempts for job in recent) / len(recent) - 1,
        spend=stats.spend,
    )


def _cells(row: Row) -> list[str]:
    def maybe(value: float | None, fmt: Callable[[float], str]) -> str:
        return "-" if value is None else fmt(value)

    return [
        row.job_type,
        str(row.jobs),
        maybe(row.success_ratio, lambda v: f"{v:.1%}"),
        maybe(row.p50, format_usd),
        maybe(row.p95, format_usd),
        maybe(row.cost_per_success, format_usd),
        maybe(row.retries_per_job, lambda v: f"{v:.3f}"),
        format_usd(row.spend),
    ]


def _line(cells: Sequence[str]) -> str:
    return " ".join(f"{cell:{align}}" for cell, (_, align) in zip(cells, _COLUMNS, strict=True))


def quantile(ordered: Sequence[float], q: float) -> float:
    """The exact q-quantile of sorted values by nearest rank (an observed value)."""
    if not ordered:
        raise ValueError("quantile of no values")
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def format_usd(value: float) -> str:
    """Dollars to three significant digits below $1 ($0.000412), to the cent above."""
    if value == 0 or not math.isfinite(value):
        return "$0" if value == 0 else f"${value}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = min(10, 2 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}"
