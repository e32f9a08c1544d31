"""Cost per finished job of CostMetrics' ledger against prometheus_client cached children.

Feeds the same jobs (one attempt_closed and one job_closed each) to costproc's CostMetrics
and to a baseline built, as CostMetrics once was, on prometheus_client Counter and
Histogram objects with label children cached per (labels, outcome). Rounds alternate
between the two; the report gives the median µs per job of each, their ratio and one
scrape's cost. Both must export the same samples, or the run fails. See README.md here.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from costproc.config.model import PrometheusConfig
from costproc.export import CostMetrics
from costproc.model import FAILURE, AttemptResult, Cost, JobResult, Labels

JOB_LABELS = ("job_type", "tenant", "service")
BY_OUTCOME = (*JOB_LABELS, "outcome")
OUTCOMES = ("success",) * 90 + ("failure",) * 7 + ("incomplete",) * 3


class Sink(Protocol):
    """The two CostSink methods a finished job goes through."""

    def attempt_closed(self, attempt: AttemptResult) -> None: ...

    def job_closed(self, job: JobResult) -> None: ...


def clean(value: float) -> float:
    """CostMetrics' cleaning: zero for NaN, infinities and negatives."""
    return value if 0.0 <= value < math.inf else 0.0


@dataclass(slots=True)
class JobChildren:
    """The children one finished job touches, cached per (labels, outcome)."""

    jobs: Any
    cost: Any
    duration: Any
    usage: tuple[Any, ...]


class Baseline:
    """Per-job metrics on prometheus_client objects with cached label children."""

    def __init__(self, config: PrometheusConfig, registry: CollectorRegistry) -> None:
        reg = registry
        self.jobs = Counter("costproc_jobs_total", "Jobs finished.", BY_OUTCOME, registry=reg)
        self.attempts = Counter(
            "costproc_job_attempts_total", "Attempts finished.", BY_OUTCOME, registry=reg
        )
        self.cost = Counter(
            "costproc_cost_usd_total", "Cost.", (*JOB_LABELS, "component"), registry=reg
        )
        self.failed = Counter(
            "costproc_failed_attempt_cost_usd_total", "Failed.", JOB_LABELS, registry=reg
        )
        self.egress = Counter(
            "costproc_egress_bytes_total", "Egress.", (*JOB_LABELS, "class"), registry=reg
        )
        self.job_cost = Histogram(
            "costproc_job_cost_usd", "Cost.", BY_OUTCOME, registry=reg, buckets=config.cost_buckets
        )
        self.duration = Histogram(
            "costproc_job_duration_seconds",
            "Duration.",
            BY_OUTCOME,
            registry=reg,
            buckets=config.duration_buckets,
        )
        self.usage = tuple(
            Histogram(f"costproc_job_{name}", "Usage.", JOB_LABELS, registry=reg, buckets=b)
            for name, b in (
                ("cpu_seconds", config.usage_buckets),
                ("memory_gb_seconds", config.usage_buckets),
                ("gpu_seconds", config.usage_buckets),
                ("egress_bytes", config.egress_buckets),
            )
        )
        self._attempts: dict[tuple[Labels, str], tuple[Any, Any]] = {}
        self._jobs: dict[tuple[Labels, str], JobChildren] = {}
        self._split: dict[tuple[Counter, Labels, str], Any] = {}

    def attempt_closed(self, attempt: AttemptResult) -> None:
        """Count the attempt and add its cost and egress, as the children-based sink did."""
        key = (attempt.labels, attempt.outcome)
        children = self._attempts.get(key)
        if children is None:
            values = (*_values(attempt.labels), attempt.outcome)
            failed = self.failed.labels(*values[:3]) if attempt.outcome == FAILURE else None
            children = self._attempts[key] = (self.attempts.labels(*values), failed)
        children[0].inc()
        if children[1] is not None:
            children[1].inc(clean(attempt.cost.total))
        self._add(self.cost, attempt.labels, attempt.cost.by_component)
        self._add(self.egress, attempt.labels, attempt.cost.egress_by_class)

    def job_closed(self, job: JobResult) -> None:
        """Count the job and observe every per-job histogram, the cost with an exemplar."""
        children = self._jobs.get((job.labels, job.outcome))
        if children is None:
            children = self._bind_job(job.labels, job.outcome)
        cost = job.cost
        children.jobs.inc()
        exemplar = {"trace_id": job.trace_id.hex()} if job.trace_id else None
        children.cost.observe(clean(cost.total), exemplar)
        children.duration.observe(clean(job.duration_seconds))
        cpu, memory, gpu, egress = children.usage
        cpu.observe(clean(cost.cpu_seconds))
        memory.observe(clean(cost.memory_gb_seconds))
        gpu.observe(clean(cost.gpu_seconds))
        egress.observe(clean(cost.egress_bytes))

    def _add(self, metric: Counter, labels: Labels, amounts: dict[str, float]) -> None:
        for value, amount in amounts.items():
            cleaned = clean(amount)
            if cleaned:
                child = self._split.get((metric, labels, value))
                if child is None:
                    child = self._split[metric, labels, value] = metric.labels(
                        *_values(labels), value
                    )
                child.inc(cleaned)

    def _bind_job(self, labels: Labels, outcome: str) -> JobChildren:
        values = _values(labels)
        children = JobChildren(
            self.jobs.labels(*values, outcome),
            self.job_cost.labels(*values, outcome),
            self.duration.labels(*values, outcome),
            tuple(h.labels(*values) for h in self.usage),
        )
        self._jobs[labels, outcome] = children
        return children


def _values(labels: Labels) -> tuple[str, str, str]:
    return labels.job_type, labels.tenant, labels.service


def build_jobs(count: int, seed: int) -> list[tuple[AttemptResult, JobResult]]:
    """Distinct finished jobs over 12 job types, 20 tenants and 6 services."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        labels = Labels(f"type-{rng.randrange(12)}", f"t-{rng.randrange(20)}", f"svc-{i % 6}")
        outcome = rng.choice(OUTCOMES)
        components = {"cpu": rng.uniform(0, 1e-3), "memory": rng.uniform(0, 2e-4)}
        if rng.random() < 0.3:
            components["llm"] = rng.uniform(0, 0.05)
        egress = {"intra_region": rng.uniform(0, 1e6)}
        if rng.random() < 0.5:
            egress["internet"] = rng.uniform(0, 1e5)
        cost = Cost(components, rng.uniform(0, 20), rng.uniform(0, 40), 0.0, egress)
        trace = rng.randbytes(16)
        jobs.append(
            (
                AttemptResult(f"job-{i}", trace, labels, outcome, cost),
                JobResult(f"job-{i}", labels, outcome, 1, cost, rng.uniform(0, 30), trace),
            )
        )
    return jobs


def time_jobs(sink: Sink, pool: Sequence[tuple[AttemptResult, JobResult]], n: int) -> float:
    """µs per job for `n` jobs cycled from `pool`."""
    attempt_closed, job_closed, size = sink.attempt_closed, sink.job_closed, len(pool)
    start = time.perf_counter_ns()
    for i in range(n):
        attempt, job = pool[i % size]
        attempt_closed(attempt)
        job_closed(job)
    return (time.perf_counter_ns() - start) / 1000 / n


def time_scrape(registry: CollectorRegistry) -> tuple[float, int]:
    """µs for one classic-text scrape of `registry`, and its size in lines."""
    start = time.perf_counter_ns()
    text = generate_latest(registry)
    return (time.perf_counter_ns() - start) / 1000, text.count(b"\n")


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[Any]], Any]:
    """Every per-job sample's value and exemplar (without its timestamp), `_created` aside."""
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if not s.name.endswith("_created"):
                ex = s.exemplar and (s.exemplar.labels, s.exemplar.value)
                out[s.name, frozenset(s.labels.items())] = (s.value, ex)
    return out


def same_samples(ledger: CollectorRegistry, baseline: CollectorRegistry) -> bool:
    """Whether the ledger exports exactly the baseline's per-job samples."""
    theirs = samples(baseline)
    wanted = {name for name, _ in theirs}
    ours = {key: value for key, value in samples(ledger).items() if key[0] in wanted}
    return ours == theirs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Warm both sinks on the pool, then time alternating rounds of each."""
    config = PrometheusConfig()
    pool = build_jobs(args.pool, args.seed)
    ledger_registry, baseline_registry = CollectorRegistry(), CollectorRegistry()
    sinks: dict[str, Sink] = {
        "ledger": CostMetrics(config, "USD", ledger_registry),
        "baseline": Baseline(config, baseline_registry),
    }
    for sink in sinks.values():
        time_jobs(sink, pool, len(pool))
    rounds: dict[str, list[float]] = {name: [] for name in sinks}
    for r in range(args.rounds):
        order = list(sinks) if r % 2 == 0 else list(reversed(sinks))
        for name in order:
            rounds[name].append(time_jobs(sinks[name], pool, args.jobs))
    ledger_us, baseline_us = (statistics.median(rounds[n]) for n in ("ledger", "baseline"))
    scrape = {
        n: time_scrape(r) for n, r in (("ledger", ledger_registry), ("baseline", baseline_registry))
    }
    return {
        "jobs_per_round": args.jobs,
        "rounds": args.rounds,
        "ledger_us_per_job": ledger_us,
        "baseline_us_per_job": baseline_us,
        "speedup": baseline_us / ledger_us,
        "rounds_us_per_job": rounds,
        "scrape_us": {n: s[0] for n, s in scrape.items()},
        "scrape_lines": {n: s[1] for n, s in scrape.items()},
        "same_samples": same_samples(ledger_registry, baseline_registry),
    }


def report(result: dict[str, Any]) -> str:
    """The figures as a short table."""
    return "\n".join(
        [
            f"{result['rounds']} rounds of {result['jobs_per_round']} jobs each (median)",
            f"ledger (CostMetrics)           {result['ledger_us_per_job']:8.2f} µs/job",
            f"baseline (cached children)     {result['baseline_us_per_job']:8.2f} µs/job",
            f"baseline / ledger              {result['speedup']:8.2f}x",
            f"one scrape, ledger / baseline  {result['scrape_us']['ledger']:8.0f} / "
            f"{result['scrape_us']['baseline']:.0f} µs ({result['scrape_lines']['ledger']} / "
            f"{result['scrape_lines']['baseline']} lines)",
            f"same samples                   {'yes' if result['same_samples'] else 'NO'}",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description="CostMetrics per-job cost against cached children")
    p.add_argument("--jobs", type=int, default=100_000, help="jobs per round (default 100000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per sink (default 5)")
    p.add_argument("--pool", type=int, default=4096, help="distinct jobs cycled (default 4096)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if min(args.jobs, args.rounds, args.pool) < 1:
        p.error("--jobs, --rounds and --pool must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if the two sinks export different samples."""
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result["same_samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
