"""The `budgets` section: spend budgets and cost-per-successful-job alerts."""

from __future__ import annotations

from typing import Any

from costproc.config.model import BudgetsConfig, JobCostBudget, SpendBudget
from costproc.config.reader import Reader, join


def read_budgets(r: Reader, node: Any, path: str) -> BudgetsConfig:
    """The `budgets` section: spend budgets, cost per job, alert thresholds."""
    d = BudgetsConfig()
    known = {
        "spend",
        "cost_per_successful_job",
        "retry_ratio_threshold",
        "failed_spend_share_threshold",
        "runbook_url",
    }
    sec = r.section(node, path, known)
    spend = [
        _spend_budget(r, item, join(join(path, "spend"), i))
        for i, item in enumerate(r.items(sec.get("spend"), join(path, "spend")))
    ]
    names = [b.name for b in spend]
    for i, name in enumerate(names):
        if name in names[:i]:
            r.bad(join(join(path, "spend"), i), f"budget name {name!r} is used twice")
    per_job = [
        _job_cost_budget(r, item, join(join(path, "cost_per_successful_job"), i))
        for i, item in enumerate(
            r.items(sec.get("cost_per_successful_job"), join(path, "cost_per_successful_job"))
        )
    ]
    return BudgetsConfig(
        spend=tuple(spend),
        cost_per_successful_job=tuple(per_job),
        retry_ratio_threshold=r.get(
            sec, path, "retry_ratio_threshold", r.number(above=0), d.retry_ratio_threshold
        ),
        failed_spend_share_threshold=r.get(
            sec,
            path,
            "failed_spend_share_threshold",
            r.number(above=0),
            d.failed_spend_share_threshold,
        ),
        runbook_url=r.get(sec, path, "runbook_url", r.text, d.runbook_url),
    )


def _spend_budget(r: Reader, node: Any, path: str) -> SpendBudget:
    sec = r.section(node, path, {"name", "amount", "period", "tenant", "job_type"})
    tenant = r.get(sec, path, "tenant", r.text, None)
    job_type = r.get(sec, path, "job_type", r.text, None)
    default_name = "-".join(p for p in ("spend", tenant, job_type) if p)
    period = r.get(sec, path, "period", r.duration, 30 * 86400.0)
    if period <= 0:
        r.bad(join(path, "period"), "must be > 0")
    if "amount" not in sec:
        r.bad(join(path, "amount"), "is required")
    return SpendBudget(
        name=r.get(sec, path, "name", r.text, default_name),
        amount=r.get(sec, path, "amount", r.number(above=0), 1.0),
        period=period,
        tenant=tenant,
        job_type=job_type,
    )


def _job_cost_budget(r: Reader, node: Any, path: str) -> JobCostBudget:
    known = {"job_type", "amount", "page_factor", "min_jobs_per_second"}
    sec = r.section(node, path, known)
    for key in ("job_type", "amount"):
        if key not in sec:
            r.bad(join(path, key), "is required")
    d = JobCostBudget(job_type="", amount=1.0)
    return JobCostBudget(
        job_type=r.get(sec, path, "job_type", r.text, ""),
        amount=r.get(sec, path, "amount", r.number(above=0), 1.0),
        page_factor=r.get(sec, path, "page_factor", r.number(above=1), d.page_factor),
        min_jobs_per_second=r.get(
            sec, path, "min_jobs_per_second", r.number(above=0), d.min_jobs_per_second
        ),
    )
