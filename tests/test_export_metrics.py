"""CostMetrics: every sink method's effect on exact sample values."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from costproc.config.model import PrometheusConfig
from costproc.export import OTHER, CostMetrics
from costproc.model import AttemptResult, Cost, JobResult, Labels

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
WEB = Labels("checkout", "acme", "web")
WEB_LABELS = {"job_type": "checkout", "tenant": "acme", "service": "web"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> CostMetrics:
    return CostMetrics(PrometheusConfig(max_label_values=2), registry=registry)


def cost(**components: float) -> Cost:
    return Cost(
        by_component=components,
        cpu_seconds=2.0,
        memory_gb_seconds=1.5,
        gpu_seconds=0.0,
        egress_by_class={"internet": 3000.0, "intra_region": 500.0},
    )


def attempt(outcome: str, labels: Labels = WEB, c: Cost | None = None) -> AttemptResult:
    return AttemptResult("job-1", TRACE, labels, outcome, c or cost(cpu=0.25, egress=0.5))


def job(outcome: str = "success", labels: Labels = WEB, c: Cost | None = None) -> JobResult:
    return JobResult("job-1", labels, outcome, 1, c or cost(cpu=0.25, egress=0.5), 1.5, TRACE)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_fresh_registry_has_only_unlabelled_and_fold_series_at_zero(
    registry: CollectorRegistry,
) -> None:
    CostMetrics(PrometheusConfig(), registry=registry)
    folds = {
        ("costproc_label_values_folded_total", (("label", label),))
        for label in ("job_type", "tenant", "service", "component", "class")
    }
    assert series(registry) == {
        ("costproc_spans_received_total", ()),
        ("costproc_spans_late_total", ()),
        ("costproc_jobs_inflight", ()),
        *folds,
    }
    for name in ("costproc_spans_received_total", "costproc_spans_late_total"):
        assert sample(registry, name) == 0.0
    assert sample(registry, "costproc_jobs_inflight") == 0.0


@pytest.mark.parametrize(
    ("outcome", "failed_cost"),
    [("success", None), ("failure", 0.75), ("incomplete", None), ("evicted", None)],
    ids=["success", "failure", "incomplete", "evicted"],
)
def test_attempt_closed(
    metrics: CostMetrics, registry: CollectorRegistry, outcome: str, failed_cost: float | None
) -> None:
    metrics.attempt_closed(attempt(outcome))
    metrics.attempt_closed(attempt(outcome))
    assert sample(registry, "costproc_job_attempts_total", **WEB_LABELS, outcome=outcome) == 2
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="cpu") == 0.5
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="egress") == 1.0
    egress = "costproc_egress_bytes_total"
    assert sample(registry, egress, **WEB_LABELS, **{"class": "internet"}) == 6000
    assert sample(registry, egress, **WEB_LABELS, **{"class": "intra_region"}) == 1000
    failed = sample(registry, "costproc_failed_attempt_cost_usd_total", **WEB_LABELS)
    assert failed == (None if failed_cost is None else 2 * failed_cost)
    assert sample(registry, "costproc_jobs_total", **WEB_LABELS, outcome=outcome) is None


def test_attempt_zero_amounts_make_no_series(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    c = Cost(by_component={"cpu": 0.1, "gpu": 0.0}, egress_by_class={"internet": 0.0})
    metrics.attempt_closed(attempt("success", c=c))
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="cpu") == 0.1
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="gpu") is None
    assert not [n for n, _ in series(registry) if n == "costproc_egress_bytes_total"]


def test_failed_attempt_with_zero_cost_is_counted(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    metrics.attempt_closed(attempt("failure", c=Cost()))
    assert sample(registry, "costproc_failed_attempt_cost_usd_total", **WEB_LABELS) == 0.0
    assert sample(registry, "costproc_job_attempts_total", **WEB_LABELS, outcome="failure") == 1


@pytest.mark.parametrize("outcome", ["success", "failure", "incomplete"])
def test_job_closed_observes_every_histogram(
    metrics: CostMetrics, registry: CollectorRegistry, outcome: str
) -> None:
    metrics.job_closed(job(outcome))
    by_outcome = {**WEB_LABELS, "outcome": outcome}
    assert sample(registry, "costproc_jobs_total", **by_outcome) == 1
    assert sample(registry, "costproc_job_cost_usd_count", **by_outcome) == 1
    assert sample(registry, "costproc_job_cost_usd_sum", **by_outcome) == 0.75
    assert sample(registry, "costproc_job_cost_usd_bucket", **by_outcome, le="0.5") == 0
    assert sample(registry, "costproc_job_cost_usd_bucket", **by_outcome, le="1.0") == 1
    assert sample(registry, "costproc_job_duration_seconds_sum", **by_outcome) == 1.5
    assert sample(registry, "costproc_job_duration_seconds_count", **by_outcome) == 1
    for name, total in [
        ("costproc_job_cpu_seconds", 2.0),
        ("costproc_job_memory_gb_seconds", 1.5),
        ("costproc_job_gpu_seconds", 0.0),
        ("costproc_job_egress_bytes", 3500.0),
    ]:
        assert sample(registry, f"{name}_count", **WEB_LABELS) == 1, name
        assert sample(registry, f"{name}_sum", **WEB_LABELS) == total, name
    # A job adds nothing to the totals: its attempts already did.
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="cpu") is None


def test_zero_jobs_are_observed_so_counts_equal_jobs(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    for _ in range(3):
        metrics.job_closed(JobResult("j", WEB, "success", 1, Cost(), 0.0, TRACE))
    metrics.job_closed(job())
    by_outcome = {**WEB_LABELS, "outcome": "success"}
    assert sample(registry, "costproc_jobs_total", **by_outcome) == 4
    for name in ("costproc_job_cost_usd", "costproc_job_duration_seconds"):
        assert sample(registry, f"{name}_count", **by_outcome) == 4, name
        assert sample(registry, f"{name}_bucket", **by_outcome, le="0.005") == 3, name
    for name in ("cpu_seconds", "memory_gb_seconds", "gpu_seconds", "egress_bytes"):
        assert sample(registry, f"costproc_job_{name}_count", **WEB_LABELS) == 4, name


def test_job_cost_carries_trace_id_exemplar(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    metrics.job_closed(job())
    exemplars = [
        s.exemplar
        for family in registry.collect()
        for s in family.samples
        if s.name == "costproc_job_cost_usd_bucket" and s.exemplar is not None
    ]
    assert len(exemplars) == 1
    assert exemplars[0].labels == {"trace_id": TRACE.hex()}
    assert exemplars[0].value == 0.75


def cost_exemplars(registry: CollectorRegistry) -> dict[str, tuple[str, float]]:
    """`le` -> (trace id, value) for every costproc_job_cost_usd bucket with an exemplar."""
    return {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for family in registry.collect()
        for s in family.samples
        if s.name == "costproc_job_cost_usd_bucket" and s.exemplar is not None
    }


def test_exemplar_sits_on_the_observed_bucket_latest_kept(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    other = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    metrics.job_closed(job())  # 0.75: le="1.0"
    metrics.job_closed(JobResult("j", WEB, "success", 1, cost(cpu=0.003), 1.0, TRACE))
    metrics.job_closed(JobResult("j", WEB, "success", 1, cost(cpu=0.8), 1.0, other))
    metrics.job_closed(JobResult("j", WEB, "success", 1, cost(cpu=0.9), 1.0, b""))
    assert cost_exemplars(registry) == {"1.0": (other.hex(), 0.8), "0.005": (TRACE.hex(), 0.003)}


JOB_COUNTS = (
    "costproc_jobs_total",
    "costproc_job_cost_usd_count",
    "costproc_job_cpu_seconds_count",
)


def job_counts(registry: CollectorRegistry) -> tuple[float, ...]:
    """Jobs, cost observations and CPU observations, all read from one scrape."""
    found = {
        s.name: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name in JOB_COUNTS
    }
    return tuple(found.get(name, 0.0) for name in JOB_COUNTS)


def test_every_scrape_sees_whole_jobs(metrics: CostMetrics, registry: CollectorRegistry) -> None:
    seen: list[tuple[float, ...]] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            seen.append(job_counts(registry))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    for _ in range(3000):
        metrics.job_closed(job())
    done.set()
    scraper.join()
    assert job_counts(registry) == (3000, 3000, 3000)
    assert [counts for counts in seen if len(set(counts)) != 1] == []


def test_created_series_follow_prometheus_client(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    metrics.attempt_closed(attempt("success"))
    metrics.job_closed(job())
    names = {s.name for family in registry.collect() for s in family.samples}
    written = "costproc_spans_received_created" in names  # a prometheus_client Counter
    for name in ("costproc_jobs_created", "costproc_cost_usd_created"):
        assert (name in names) == written, name
    assert ("costproc_job_cost_usd_created" in names) == written


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0], ids=["nan", "inf", "negative"])
def test_bad_numbers_never_poison_series(
    metrics: CostMetrics, registry: CollectorRegistry, bad: float
) -> None:
    c = Cost(by_component={"cpu": bad}, cpu_seconds=bad, egress_by_class={"internet": bad})
    metrics.attempt_closed(attempt("failure", c=c))
    metrics.job_closed(JobResult("j", WEB, "failure", 1, c, bad, TRACE))
    by_outcome = {**WEB_LABELS, "outcome": "failure"}
    assert sample(registry, "costproc_failed_attempt_cost_usd_total", **WEB_LABELS) == 0.0
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="cpu") is None
    assert sample(registry, "costproc_job_cost_usd_sum", **by_outcome) == 0.0
    assert sample(registry, "costproc_job_duration_seconds_count", **by_outcome) == 1
    assert sample(registry, "costproc_job_cpu_seconds_sum", **WEB_LABELS) == 0.0


def test_late_spans(metrics: CostMetrics, registry: CollectorRegistry) -> None:
    metrics.late_spans(WEB, cost(cpu=0.25, llm=1.5), 3)
    metrics.late_spans(WEB, Cost(), 2)
    assert sample(registry, "costproc_spans_late_total") == 5
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="cpu") == 0.25
    assert sample(registry, "costproc_cost_usd_total", **WEB_LABELS, component="llm") == 1.5
    egress = "costproc_egress_bytes_total"
    assert sample(registry, egress, **WEB_LABELS, **{"class": "internet"}) == 3000
    assert sample(registry, "costproc_jobs_total", **WEB_LABELS, outcome="success") is None
    assert sample(registry, "costproc_job_cost_usd_count", **WEB_LABELS, outcome="success") is None


def test_intake(metrics: CostMetrics, registry: CollectorRegistry) -> None:
    metrics.spans_received(512)
    metrics.spans_received(10)
    metrics.spans_rejected("invalid_span_id", 2)
    metrics.spans_rejected("invalid_span_id", 1)
    metrics.spans_rejected("negative_usage", 4)
    metrics.spans_rejected("unused", 0)
    assert sample(registry, "costproc_spans_received_total") == 522
    rejected = "costproc_spans_rejected_total"
    assert sample(registry, rejected, reason="invalid_span_id") == 3
    assert sample(registry, rejected, reason="negative_usage") == 4
    assert sample(registry, rejected, reason="unused") is None


def test_jobs_evicted_and_inflight(metrics: CostMetrics, registry: CollectorRegistry) -> None:
    metrics.jobs_evicted("max_inflight_traces", 2)
    metrics.jobs_evicted("max_inflight_traces", 5)
    metrics.jobs_inflight(40)
    metrics.jobs_inflight(12)
    assert sample(registry, "costproc_jobs_evicted_total", reason="max_inflight_traces") == 7
    assert sample(registry, "costproc_jobs_inflight") == 12


@pytest.mark.parametrize(
    ("field", "label"),
    [("job_type", "job_type"), ("tenant", "tenant"), ("service", "service")],
    ids=["job_type", "tenant", "service"],
)
def test_label_cap_folds_into_other(
    metrics: CostMetrics, registry: CollectorRegistry, field: str, label: str
) -> None:
    def labels(value: str) -> Labels:
        return Labels(**{**WEB_LABELS, field: value})

    for value in ("a", "b", "c", "d", "a", "c"):
        metrics.attempt_closed(attempt("success", labels(value)))
        metrics.job_closed(job("success", labels(value)))
    attempts = "costproc_job_attempts_total"
    counts = {
        v: sample(registry, attempts, **{**WEB_LABELS, label: v}, outcome="success")
        for v in ("a", "b", "c", "d", OTHER)
    }
    assert counts == {"a": 2, "b": 1, "c": None, "d": None, OTHER: 3}
    other = {**WEB_LABELS, label: OTHER}
    assert sample(registry, "costproc_jobs_total", **other, outcome="success") == 3
    assert sample(registry, "costproc_job_cpu_seconds_count", **other) == 3
    assert sample(registry, "costproc_cost_usd_total", **other, component="cpu") == 0.75
    # Three folded attempts and three folded jobs.
    assert sample(registry, "costproc_label_values_folded_total", label=label) == 6


@pytest.mark.parametrize(
    ("split", "label", "make"),
    [
        ("costproc_cost_usd_total", "component", lambda v: Cost(by_component={v: 1.0})),
        ("costproc_egress_bytes_total", "class", lambda v: Cost(egress_by_class={v: 1.0})),
    ],
    ids=["component", "class"],
)
def test_component_and_class_are_capped(
    metrics: CostMetrics,
    registry: CollectorRegistry,
    split: str,
    label: str,
    make: Callable[[str], Cost],
) -> None:
    for value in ("x", "y", "z", "x", "w"):
        metrics.late_spans(WEB, make(value), 1)
    values = {v: sample(registry, split, **WEB_LABELS, **{label: v}) for v in "xyzw"}
    assert values == {"x": 2.0, "y": 1.0, "z": None, "w": None}
    assert sample(registry, split, **WEB_LABELS, **{label: OTHER}) == 2.0
    assert sample(registry, "costproc_label_values_folded_total", label=label) == 2


def test_fold_series_exist_at_zero_before_any_fold(
    metrics: CostMetrics, registry: CollectorRegistry
) -> None:
    metrics.attempt_closed(attempt("success"))
    for label in ("job_type", "tenant", "service", "component", "class"):
        assert sample(registry, "costproc_label_values_folded_total", label=label) == 0.0


def test_hot_path_binds_no_children_once_warm(
    metrics: CostMetrics, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics.attempt_closed(attempt("failure"))
    metrics.job_closed(job("failure"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("labels() on the hot path")

    monkeypatch.setattr(MetricWrapperBase, "labels", refuse)
    metrics.attempt_closed(attempt("failure"))
    metrics.job_closed(job("failure"))
    monkeypatch.undo()
    assert sample(registry, "costproc_jobs_total", **WEB_LABELS, outcome="failure") == 2


@pytest.mark.parametrize(
    ("currency", "suffix"), [("USD", "usd"), ("EUR", "eur"), ("jpy", "jpy")], ids=str
)
def test_currency_is_lowercased_in_names(
    registry: CollectorRegistry, currency: str, suffix: str
) -> None:
    metrics = CostMetrics(PrometheusConfig(), currency=currency, registry=registry)
    metrics.attempt_closed(attempt("failure"))
    metrics.job_closed(job())
    assert sample(registry, f"costproc_cost_{suffix}_total", **WEB_LABELS, component="cpu") == 0.25
    assert sample(registry, f"costproc_failed_attempt_cost_{suffix}_total", **WEB_LABELS) == 0.75
    job_cost = f"costproc_job_cost_{suffix}_count"
    assert sample(registry, job_cost, **WEB_LABELS, outcome="success") == 1


@pytest.mark.parametrize("currency", ["", "US", "EURO", "U$D", "usd_"])
def test_invalid_currency_is_refused(registry: CollectorRegistry, currency: str) -> None:
    with pytest.raises(ValueError, match="currency"):
        CostMetrics(PrometheusConfig(), currency=currency, registry=registry)


def test_price_table_info_switches(metrics: CostMetrics, registry: CollectorRegistry) -> None:
    info = "costproc_price_table_info"
    metrics.price_table_in_force("2024-01", "USD")
    assert sample(registry, info, version="2024-01", currency="USD") == 1
    metrics.price_table_in_force("2024-07", "USD")
    metrics.price_table_in_force("2024-07", "USD")
    assert sample(registry, info, version="2024-01", currency="USD") is None
    assert sample(registry, info, version="2024-07", currency="USD") == 1
    assert [labels for name, labels in series(registry) if name == info] == [
        (("currency", "USD"), ("version", "2024-07"))
    ]


def test_own_registry_when_none_given() -> None:
    first, second = CostMetrics(PrometheusConfig()), CostMetrics(PrometheusConfig())
    first.spans_received(1)
    assert first.registry is not second.registry
    assert second.registry.get_sample_value("costproc_spans_received_total") == 0.0


def test_configured_buckets_are_used(registry: CollectorRegistry) -> None:
    config = PrometheusConfig(
        cost_buckets=(0.1, 1.0),
        duration_buckets=(2.0,),
        usage_buckets=(1.0, 3.0),
        egress_buckets=(4000.0,),
    )
    CostMetrics(config, registry=registry).job_closed(job())
    by_outcome = {**WEB_LABELS, "outcome": "success"}
    assert sample(registry, "costproc_job_cost_usd_bucket", **by_outcome, le="1.0") == 1
    assert sample(registry, "costproc_job_duration_seconds_bucket", **by_outcome, le="2.0") == 1
    assert sample(registry, "costproc_job_cpu_seconds_bucket", **WEB_LABELS, le="1.0") == 0
    assert sample(registry, "costproc_job_cpu_seconds_bucket", **WEB_LABELS, le="3.0") == 1
    assert sample(registry, "costproc_job_egress_bytes_bucket", **WEB_LABELS, le="4000.0") == 1
