"""Prometheus metrics for closed attempts, finished jobs and intake.

rollup -> attempt_closed / job_closed / late_spans -> cap labels -> ledger (floats, one
lock) -> scrape: the ledger's collector copies it under the lock and formats the copy

Ledger series are cached under their capped label values, so the cache never holds more
entries than the ledger holds series. A value that folds into `__other__` never matches
a cached key and always takes the slow path, which is where folds are counted. Intake
and self metrics change per request, not per job, and stay prometheus_client objects.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from costproc.config.model import PrometheusConfig
from costproc.export.ledger import (
    CounterFamily,
    CounterSeries,
    HistogramFamily,
    HistogramSeries,
    Ledger,
)
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

    __slots__ = ("_folded", "_kept", "_limit", "_name")

    def __init__(self, name: str, limit: int, folds: Counter) -> None:
        self._name = name
        self._limit = limit
        # Bound at 0 from the start: increase() needs a sample before the first fold,
        # or the alert on folding misses folds that start and stop between scrapes.
        self._folded = folds.labels(name)
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self._limit:
            self._kept.add(value)
            return value
        self._folded.inc()
        return OTHER


# Capped (job_type, tenant, service): plain strings hash and compare in C, where the
# Labels dataclass would run Python-level __hash__ and __eq__ on every lookup.
_Values = tuple[str, str, str]


class _Split:
    """A counter over the job labels plus one more capped label (component, class)."""

    __slots__ = ("_cap", "_children", "_metric")

    def __init__(self, metric: CounterFamily, cap: _LabelCap) -> None:
        self._metric = metric
        self._cap = cap
        # Capped job labels -> capped value -> series.
        self._children: dict[_Values, dict[str, CounterSeries]] = {}

    def add(self, values: _Values, amounts: dict[str, float]) -> None:
        """Add each amount under capped `values`, lock held; zero amounts make no series."""
        children = self._children.get(values)
        if children is None:
            children = self._children[values] = {}
        for value, amount in amounts.items():
            cleaned = _clean(amount)
            if cleaned:
                child = children.get(value)
                if child is None:
                    child = self._bind(children, values, value)
                child.value += cleaned

    def _bind(
        self, children: dict[str, CounterSeries], values: _Values, value: str
    ) -> CounterSeries:
        capped = self._cap(value)
        child = children.get(capped)
        if child is None:
            child = children[capped] = self._metric.series((*values, capped))
        return child


@dataclass(slots=True)
class _AttemptSeries:
    """The ledger series one closed attempt touches, for one (capped labels, outcome)."""

    values: _Values
    attempts: CounterSeries
    failed: CounterSeries | None  # only failed attempts get a failed-cost series


@dataclass(slots=True)
class _JobSeries:
    """The ledger series one finished job touches, for one (capped labels, outcome)."""

    jobs: CounterSeries
    cost: HistogramSeries
    duration: HistogramSeries
    cpu: HistogramSeries
    memory: HistogramSeries
    gpu: HistogramSeries
    egress: HistogramSeries


class _JobFamilies:
    """The per-attempt and per-job families, kept in one ledger."""

    def __init__(self, config: PrometheusConfig, currency: str, ledger: Ledger) -> None:
        self._totals(currency, ledger)
        self._histograms(config, currency, ledger)

    def _totals(self, cur: str, ledger: Ledger) -> None:
        job, by_outcome = _JOB_LABELS, (*_JOB_LABELS, "outcome")
        self.jobs = ledger.counter("costproc_jobs_total", "Jobs finished.", by_outcome)
        self.attempts = ledger.counter(
            "costproc_job_attempts_total", "Attempts finished.", by_outcome
        )
        self.cost = ledger.counter(
            f"costproc_cost_{cur}_total", "Every priced unit of cost.", (*job, "component")
        )
        self.failed = ledger.counter(
            f"costproc_failed_attempt_cost_{cur}_total", "Spend on failed attempts.", job
        )
        self.egress = ledger.counter(
            "costproc_egress_bytes_total", "Egress by class.", (*job, "class")
        )

    def _histograms(self, config: PrometheusConfig, cur: str, ledger: Ledger) -> None:
        job, by_outcome = _JOB_LABELS, (*_JOB_LABELS, "outcome")
        self.job_cost = ledger.histogram(
            f"costproc_job_cost_{cur}",
            "Cost of each finished job, all attempts.",
            by_outcome,
            config.cost_buckets,
        )
        self.duration = ledger.histogram(
            "costproc_job_duration_seconds",
            "First span start to last span end.",
            by_outcome,
            config.duration_buckets,
        )
        self.usage: tuple[HistogramFamily, ...] = tuple(
            ledger.histogram(f"costproc_job_{name}", doc, job, buckets)
            for name, doc, buckets in (
                ("cpu_seconds", "CPU core-seconds per job.", config.usage_buckets),
                ("memory_gb_seconds", "Memory GB-seconds per job.", config.usage_buckets),
                ("gpu_seconds", "GPU-seconds per job.", config.usage_buckets),
                ("egress_bytes", "Egress bytes per job.", config.egress_buckets),
            )
        )


class _IntakeFamilies:
    """Intake and self metrics: prometheus_client objects, registered after the ledger."""

    def __init__(self, reg: CollectorRegistry) -> None:
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

    Called from one thread (the event loop). Per-job figures go to a ledger under its
    lock, which scrapes on other threads take only to copy it; intake metrics rely on
    prometheus_client's own locks.
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
        ledger = Ledger()
        self._lock = ledger.lock
        self._f = _JobFamilies(config, currency.lower(), ledger)
        # Registered first, so the exposition lists families in their historical order.
        self.registry.register(ledger)
        self._i = _IntakeFamilies(self.registry)
        limit, folds = config.max_label_values, self._i.folded
        self._job_type = _LabelCap("job_type", limit, folds)
        self._tenant = _LabelCap("tenant", limit, folds)
        self._service = _LabelCap("service", limit, folds)
        self._cost = _Split(self._f.cost, _LabelCap("component", limit, folds))
        self._egress = _Split(self._f.egress, _LabelCap("class", limit, folds))
        # Keyed by capped (job_type, tenant, service, outcome), looked up with raw values.
        self._attempt_series: dict[tuple[str, str, str, str], _AttemptSeries] = {}
        self._job_series: dict[tuple[str, str, str, str], _JobSeries] = {}
        self._rejected: dict[str, Counter] = {}
        self._dropped: dict[str, Counter] = {}
        self._refused: dict[str, Counter] = {}
        self._evicted: dict[str, Counter] = {}
        self._table: tuple[str, str] | None = None

    def attempt_closed(self, attempt: AttemptResult) -> None:
        """Count the attempt; add its cost and egress, and a failure's cost, to the totals."""
        labels, cost = attempt.labels, attempt.cost
        key = (labels.job_type, labels.tenant, labels.service, attempt.outcome)
        with self._lock:
            series = self._attempt_series.get(key)
            if series is None:
                series = self._bind_attempt(labels, attempt.outcome)
            series.attempts.value += 1.0
            if series.failed is not None:
                series.failed.value += _clean(cost.total)
            self._cost.add(series.values, cost.by_component)
            self._egress.add(series.values, cost.egress_by_class)

    def job_closed(self, job: JobResult) -> None:
        """Count the job and observe it in every per-job histogram, zeros included."""
        labels, cost = job.labels, job.cost
        key = (labels.job_type, labels.tenant, labels.service, job.outcome)
        total, duration = _clean(cost.total), _clean(job.duration_seconds)
        cpu, memory = _clean(cost.cpu_seconds), _clean(cost.memory_gb_seconds)
        gpu, egress = _clean(cost.gpu_seconds), _clean(cost.egress_bytes)
        now = time.time()
        with self._lock:
            series = self._job_series.get(key)
            if series is None:
                series = self._bind_job(labels, job.outcome)
            series.jobs.value += 1.0
            series.cost.observe_traced(total, job.trace_id, now)
            series.duration.observe(duration)
            series.cpu.observe(cpu)
            series.memory.observe(memory)
            series.gpu.observe(gpu)
            series.egress.observe(egress)

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        """Add late spans' cost and egress to the totals and count them."""
        with self._lock:
            values = self._cap(labels)
            self._cost.add(values, cost.by_component)
            self._egress.add(values, cost.egress_by_class)
        if count > 0:
            self._i.late.inc(count)

    def jobs_evicted(self, reason: str, count: int) -> None:
        """Count jobs closed early, by reason."""
        if count > 0:
            _bound(self._evicted, self._i.evicted, reason).inc(count)

    def jobs_inflight(self, count: int) -> None:
        """Set the number of open jobs."""
        self._i.inflight.set(count)

    def spans_received(self, count: int) -> None:
        """Count decoded spans, rejected ones included."""
        if count > 0:
            self._i.received.inc(count)

    def spans_rejected(self, reason: str, count: int) -> None:
        """Count rejected spans, by reason."""
        if count > 0:
            _bound(self._rejected, self._i.rejected, reason).inc(count)

    def spans_dropped(self, reason: str, count: int) -> None:
        """Count accepted spans that were deliberately not rolled up, by reason."""
        if count > 0:
            _bound(self._dropped, self._i.dropped, reason).inc(count)

    def requests_refused(self, reason: str) -> None:
        """Count a request refused with a retryable status, by reason."""
        _bound(self._refused, self._i.refused, reason).inc()

    def price_table_in_force(self, version: str, currency: str) -> None:
        """Mark `version` as the price table in force, and only it."""
        key = (version, currency)
        if key == self._table:
            return
        if self._table is not None:
            self._i.price_table.remove(*self._table)
        self._i.price_table.labels(*key).set(1)
        self._table = key

    def _cap(self, labels: Labels) -> _Values:
        return (
            self._job_type(labels.job_type),
            self._tenant(labels.tenant),
            self._service(labels.service),
        )

    def _bind_attempt(self, labels: Labels, outcome: str) -> _AttemptSeries:
        values = self._cap(labels)
        series = self._attempt_series.get((*values, outcome))
        if series is None:
            failed = self._f.failed.series(values) if outcome == FAILURE else None
            series = _AttemptSeries(values, self._f.attempts.series((*values, outcome)), failed)
            self._attempt_series[(*values, outcome)] = series
        return series

    def _bind_job(self, labels: Labels, outcome: str) -> _JobSeries:
        values = self._cap(labels)
        series = self._job_series.get((*values, outcome))
        if series is None:
            f = self._f
            cpu, memory, gpu, egress = (h.series(values) for h in f.usage)
            series = _JobSeries(
                jobs=f.jobs.series((*values, outcome)),
                cost=f.job_cost.series((*values, outcome)),
                duration=f.duration.series((*values, outcome)),
                cpu=cpu,
                memory=memory,
                gpu=gpu,
                egress=egress,
            )
            self._job_series[(*values, outcome)] = series
        return series
