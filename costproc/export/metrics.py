"""Prometheus metrics for closed attempts, finished jobs and intake.

rollup -> attempt_closed / job_closed / late_spans -> cap labels -> cached children -> scrape

Children are cached under their capped label values, so the cache never holds more
entries than the registry holds series. A value that folds into `__other__` never
matches a cached key and always takes the slow path, which is where folds are counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from costproc.config.model import PrometheusConfig
from costproc.model import FAILURE, AttemptResult, Cost, JobResult, Labels

OTHER = "__other__"

_JOB_LABELS = ("job_type", "tenant", "service")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


def _clean(value: float) -> float:
    """Zero for NaN, infinities and negatives, which would poison a series' sum for good."""
    return value if 0.0 <= value < math.inf else 0.0


def _bound(children: dict[str, Counter], metric: Counter, value: str) -> Counter:
    """The child of a one-label counter, bound on first use."""
    child = children.get(value)
    if child is None:
        child = children[value] = metric.labels(value)
    return child


class _LabelCap:
    """Keeps the first `limit` distinct values of one label and folds the rest into OTHER."""

    __slots__ = ("_folded", "_folds", "_kept", "_limit", "_name")

    def __init__(self, name: str, limit: int, folds: Counter) -> None:
        self._name = name
        self._limit = limit
        self._folds = folds
        # Bound on the first fold, so an uncapped deployment shows no empty series.
        self._folded: Counter | None = None
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self._limit:
            self._kept.add(value)
            return value
        if self._folded is None:
            self._folded = self._folds.labels(self._name)
        self._folded.inc()
        return OTHER


class _Split:
    """A counter over the job labels plus one more capped label (component, class)."""

    __slots__ = ("_cap", "_children", "_metric")

    def __init__(self, metric: Counter, cap: _LabelCap) -> None:
        self._metric = metric
        self._cap = cap
        self._children: dict[tuple[Labels, str], Counter] = {}

    def add(self, labels: Labels, amounts: dict[str, float]) -> None:
        """Add each amount under already-capped `labels`; zero amounts make no series."""
        for value, amount in amounts.items():
            cleaned = _clean(amount)
            if cleaned:
                child = self._children.get((labels, value))
                if child is None:
                    child = self._bind(labels, value)
                child.inc(cleaned)

    def _bind(self, labels: Labels, value: str) -> Counter:
        key = (labels, self._cap(value))
        child = self._children.get(key)
        if child is None:
            child = self._metric.labels(labels.job_type, labels.tenant, labels.service, key[1])
            self._children[key] = child
        return child


@dataclass(slots=True)
class _AttemptSeries:
    """The children one closed attempt touches, for one (capped labels, outcome)."""

    labels: Labels
    attempts: Counter
    failed: Counter | None  # only failed attempts get a failed-cost series


@dataclass(slots=True)
class _JobSeries:
    """The children one finished job touches, for one (capped labels, outcome)."""

    jobs: Counter
    cost: Histogram
    duration: Histogram
    cpu: Histogram
    memory: Histogram
    gpu: Histogram
    egress: Histogram


class _Families:
    """Every metric family, registered once on one registry."""

    def __init__(self, config: PrometheusConfig, currency: str, reg: CollectorRegistry) -> None:
        self._totals(currency, reg)
        self._histograms(config, currency, reg)
        self._intake(reg)

    def _totals(self, cur: str, reg: CollectorRegistry) -> None:
        job, by_outcome = _JOB_LABELS, (*_JOB_LABELS, "outcome")
        self.jobs = Counter("costproc_jobs_total", "Jobs finished.", by_outcome, registry=reg)
        self.attempts = Counter(
            "costproc_job_attempts_total", "Attempts finished.", by_outcome, registry=reg
        )
        self.cost = Counter(
            f"costproc_cost_{cur}_total",
            "Every priced unit of cost.",
            (*job, "component"),
            registry=reg,
        )
        self.failed = Counter(
            f"costproc_failed_attempt_cost_{cur}_total",
            "Spend on failed attempts.",
            job,
            registry=reg,
        )
        self.egress = Counter(
            "costproc_egress_bytes_total", "Egress by class.", (*job, "class"), registry=reg
        )

    def _histograms(self, config: PrometheusConfig, cur: str, reg: CollectorRegistry) -> None:
        job, by_outcome = _JOB_LABELS, (*_JOB_LABELS, "outcome")
        self.job_cost = Histogram(
            f"costproc_job_cost_{cur}",
            "Cost of each finished job, all attempts.",
            by_outcome,
            registry=reg,
            buckets=config.cost_buckets,
        )
        self.duration = Histogram(
            "costproc_job_duration_seconds",
            "First span start to last span end.",
            by_outcome,
            registry=reg,
            buckets=config.duration_buckets,
        )
        self.usage = tuple(
            Histogram(f"costproc_job_{name}", doc, job, registry=reg, buckets=buckets)
            for name, doc, buckets in (
                ("cpu_seconds", "CPU core-seconds per job.", config.usage_buckets),
                ("memory_gb_seconds", "Memory GB-seconds per job.", config.usage_buckets),
                ("gpu_seconds", "GPU-seconds per job.", config.usage_buckets),
                ("egress_bytes", "Egress bytes per job.", config.egress_buckets),
            )
        )

    def _intake(self, reg: CollectorRegistry) -> None:
        self.received = Counter(
            "costproc_spans_received_total", "Spans decoded, rejected ones included.", registry=reg
        )
        self.rejected = Counter(
            "costproc_spans_rejected_total", "Spans rejected, by reason.", ("reason",), registry=reg
        )
        self.dropped = Counter(
            "costproc_spans_dropped_total",
            "Accepted spans not rolled up on purpose: resent duplicates, untagged in drop mode.",
            ("reason",),
            registry=reg,
        )
        self.refused = Counter(
            "costproc_requests_refused_total",
            "Requests refused with a retryable status while state or the forward queue was full.",
            ("reason",),
            registry=reg,
        )
        self.late = Counter(
            "costproc_spans_late_total", "Spans arrived after their attempt closed.", registry=reg
        )
        self.inflight = Gauge("costproc_jobs_inflight", "Open jobs.", registry=reg)
        self.evicted = Counter(
            "costproc_jobs_evicted_total",
            "Jobs closed early, by reason.",
            ("reason",),
            registry=reg,
        )
        self.folded = Counter(
            "costproc_label_values_folded_total",
            "Observations whose label value was folded into __other__ by the cardinality cap.",
            ("label",),
            registry=reg,
        )
        self.price_table = Gauge(
            "costproc_price_table_info",
            "1 for the price table in force.",
            ("version", "currency"),
            registry=reg,
        )


class CostMetrics:
    """The CostSink and IntakeSink that keep costproc's Prometheus metrics.

    Called from one thread (the event loop); scrapes read the registry from others,
    which prometheus_client's own locks make safe.
    """

    def __init__(
        self,
        config: PrometheusConfig,
        currency: str = "USD",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not _CURRENCY.fullmatch(currency):
            raise ValueError(f"currency must be a three-letter ISO 4217 code, got {currency!r}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self._f = _Families(config, currency.lower(), self.registry)
        limit, folds = config.max_label_values, self._f.folded
        self._job_type = _LabelCap("job_type", limit, folds)
        self._tenant = _LabelCap("tenant", limit, folds)
        self._service = _LabelCap("service", limit, folds)
        self._cost = _Split(self._f.cost, _LabelCap("component", limit, folds))
        self._egress = _Split(self._f.egress, _LabelCap("class", limit, folds))
        self._attempt_series: dict[tuple[Labels, str], _AttemptSeries] = {}
        self._job_series: dict[tuple[Labels, str], _JobSeries] = {}
        self._rejected: dict[str, Counter] = {}
        self._dropped: dict[str, Counter] = {}
        self._refused: dict[str, Counter] = {}
        self._evicted: dict[str, Counter] = {}
        self._table: tuple[str, str] | None = None

    def attempt_closed(self, attempt: AttemptResult) -> None:
        """Count the attempt; add its cost and egress, and a failure's cost, to the totals."""
        series = self._attempt_series.get((attempt.labels, attempt.outcome))
        if series is None:
            series = self._bind_attempt(attempt.labels, attempt.outcome)
        series.attempts.inc()
        if series.failed is not None:
            series.failed.inc(_clean(attempt.cost.total))
        self._cost.add(series.labels, attempt.cost.by_component)
        self._egress.add(series.labels, attempt.cost.egress_by_class)

    def job_closed(self, job: JobResult) -> None:
        """Count the job and observe it in every per-job histogram, zeros included."""
        series = self._job_series.get((job.labels, job.outcome))
        if series is None:
            series = self._bind_job(job.labels, job.outcome)
        cost = job.cost
        series.jobs.inc()
        exemplar = {"trace_id": job.trace_id.hex()} if job.trace_id else None
        series.cost.observe(_clean(cost.total), exemplar)
        series.duration.observe(_clean(job.duration_seconds))
        series.cpu.observe(_clean(cost.cpu_seconds))
        series.memory.observe(_clean(cost.memory_gb_seconds))
        series.gpu.observe(_clean(cost.gpu_seconds))
        series.egress.observe(_clean(cost.egress_bytes))

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        """Add late spans' cost and egress to the totals and count them."""
        capped = self._cap(labels)
        self._cost.add(capped, cost.by_component)
        self._egress.add(capped, cost.egress_by_class)
        if count > 0:
            self._f.late.inc(count)

    def jobs_evicted(self, reason: str, count: int) -> None:
        """Count jobs closed early, by reason."""
        if count > 0:
            _bound(self._evicted, self._f.evicted, reason).inc(count)

    def jobs_inflight(self, count: int) -> None:
        """Set the number of open jobs."""
        self._f.inflight.set(count)

    def spans_received(self, count: int) -> None:
        """Count decoded spans, rejected ones included."""
        if count > 0:
            self._f.received.inc(count)

    def spans_rejected(self, reason: str, count: int) -> None:
        """Count rejected spans, by reason."""
        if count > 0:
            _bound(self._rejected, self._f.rejected, reason).inc(count)

    def spans_dropped(self, reason: str, count: int) -> None:
        """Count accepted spans that were deliberately not rolled up, by reason."""
        if count > 0:
            _bound(self._dropped, self._f.dropped, reason).inc(count)

    def requests_refused(self, reason: str) -> None:
        """Count a request refused with a retryable status, by reason."""
        _bound(self._refused, self._f.refused, reason).inc()

    def price_table_in_force(self, version: str, currency: str) -> None:
        """Mark `version` as the price table in force, and only it."""
        key = (version, currency)
        if key == self._table:
            return
        if self._table is not None:
            self._f.price_table.remove(*self._table)
        self._f.price_table.labels(*key).set(1)
        self._table = key

    def _cap(self, labels: Labels) -> Labels:
        return Labels(
            self._job_type(labels.job_type),
            self._tenant(labels.tenant),
            self._service(labels.service),
        )

    def _bind_attempt(self, labels: Labels, outcome: str) -> _AttemptSeries:
        capped = self._cap(labels)
        series = self._attempt_series.get((capped, outcome))
        if series is None:
            values = (capped.job_type, capped.tenant, capped.service)
            failed = self._f.failed.labels(*values) if outcome == FAILURE else None
            series = _AttemptSeries(capped, self._f.attempts.labels(*values, outcome), failed)
            self._attempt_series[(capped, outcome)] = series
        return series

    def _bind_job(self, labels: Labels, outcome: str) -> _JobSeries:
        capped = self._cap(labels)
        series = self._job_series.get((capped, outcome))
        if series is None:
            f, values = self._f, (capped.job_type, capped.tenant, capped.service)
            cpu, memory, gpu, egress = (h.labels(*values) for h in f.usage)
            series = _JobSeries(
                jobs=f.jobs.labels(*values, outcome),
                cost=f.job_cost.labels(*values, outcome),
                duration=f.duration.labels(*values, outcome),
                cpu=cpu,
                memory=memory,
                gpu=gpu,
                egress=egress,
            )
            self._job_series[(capped, outcome)] = series
        return series
