"""Prometheus recording and alerting rules generated from the config's cost budgets.

config.budgets -> recording rules (spend, cost per successful job, retries, failed spend)
-> alerting rules (multi-window burn rates, retry storms, costproc's own health) -> YAML
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml

from costproc.config.model import BudgetsConfig, Config, JobCostBudget, SpendBudget

__all__ = ["DEFAULT_SCRAPE_JOB", "SHIPPED_RULES_PATH", "generate_rules", "render_rules"]

Rule = dict[str, Any]

DEFAULT_SCRAPE_JOB = "costproc"
SHIPPED_RULES_PATH = "deploy/prometheus/costproc-rules.yaml"

# Every window a burn-rate or ratio alert reads, recorded once so alerts stay cheap.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_JOBS = "costproc_jobs_total"
_ATTEMPTS = "costproc_job_attempts_total"
RETRY_RATIO = "costproc:retry_ratio:rate1h"
FAILED_SPEND_SHARE = "costproc:failed_attempt_spend_share:ratio_rate1h"

_VALUE_1F = '{{ $value | printf "%.1f" }}'
_VALUE_0F = '{{ $value | printf "%.0f" }}'
_VALUE_3G = '{{ $value | printf "%.3g" }}'
_VALUE_PCT = "{{ $value | humanizePercentage }}"
_JOB_TYPE = "{{ $labels.job_type }}"
_JOB = "{{ $labels.job }}"
# The capped labels that budgets and alerts select on. The other two, component and egress
# class, take their values from the price table, so they cannot run away.
_FOLD_WATCHED = ("job_type", "tenant", "service")


@dataclass(frozen=True, slots=True)
class BurnWindows:
    """Alert when both windows burn faster than `factor`, held for `hold`."""

    severity: str
    long: str
    short: str
    factor: float
    hold: str


# A page spends 2% (fast) or 5% (slow) of a 30-day budget before it fires; a ticket 10%.
# The short window lets an alert resolve minutes after the burn stops, not hours.
SPEND_BURNS = (
    BurnWindows("page", "1h", "5m", 14.4, "2m"),
    BurnWindows("page", "6h", "30m", 6.0, "15m"),
    BurnWindows("ticket", "1d", "2h", 3.0, "1h"),
    BurnWindows("ticket", "3d", "6h", 1.0, "3h"),
)
# Cost per successful job pages fast (its factor is per budget): a retry storm multiplies
# spend within the hour.
JOB_COST_LONG, JOB_COST_SHORT, JOB_COST_HOLD = "1h", "5m", "5m"
# Retries and failed spend waste money slowly; an hour above threshold earns a ticket.
RATIO_TICKET_HOLD = "1h"


@dataclass(frozen=True, slots=True)
class SelfAlert:
    """One alert on costproc's own health."""

    name: str
    severity: str
    expr: str
    hold: str | None  # None: fire at once
    summary: str
    description: str


@dataclass(frozen=True, slots=True)
class _Names:
    """Metric and recording-rule names for one currency."""

    cur: str

    @property
    def cost(self) -> str:
        return f"costproc_cost_{self.cur}_total"

    @property
    def failed_cost(self) -> str:
        return f"costproc_failed_attempt_cost_{self.cur}_total"

    def spend(self, window: str) -> str:
        return f"costproc:spend_{self.cur}:rate{window}"

    def cost_per_job(self, window: str) -> str:
        return f"costproc:cost_per_successful_job_{self.cur}:ratio_rate{window}"


def generate_rules(config: Config, scrape_job: str = DEFAULT_SCRAPE_JOB) -> dict[str, Any]:
    """A Prometheus rule-file document for the config's budgets and costproc's health."""
    if not scrape_job:
        raise ValueError("scrape_job must not be empty: it would match every target")
    budgets = config.budgets
    names = _Names(config.pricing.currency.lower())
    currency = config.pricing.currency
    # An alert shares a group with the recording rules it reads: rules in a group run in
    # order, so it sees this evaluation's values, never the previous one's.
    groups = [
        (f"costproc-spend-{b.name}", _spend_rules(b, names, currency, budgets.runbook_url))
        for b in budgets.spend
    ]
    groups.append(("costproc-job-cost", _job_cost_rules(budgets, names, currency)))
    groups.append(
        ("costproc-self", [_self_rule(a, budgets.runbook_url) for a in _self_alerts(scrape_job)])
    )
    return {"groups": [{"name": name, "rules": rules} for name, rules in groups]}


def render_rules(
    config: Config, scrape_job: str = DEFAULT_SCRAPE_JOB, config_path: str | None = None
) -> str:
    """The rule file as YAML, under a header naming the config it was generated from."""
    body = yaml.dump(
        generate_rules(config, scrape_job),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=1_000_000,  # never fold a line inside a {{ template }}
    )
    return _header(scrape_job, config_path) + body


def _header(scrape_job: str, config_path: str | None) -> str:
    command = "costproc rules"
    if config_path is not None:
        command += f" --config {config_path}"
    if scrape_job != DEFAULT_SCRAPE_JOB:
        command += f" --scrape-job {scrape_job}"
    command += " > " + (SHIPPED_RULES_PATH if config_path is None else "FILE")
    source = "the bundled config/costproc.yaml" if config_path is None else config_path
    return (
        f"# Prometheus rules for costproc's cost budgets and its own health, generated by\n"
        f"# `costproc rules` from {source} for scrape job {scrape_job}.\n"
        f"# Do not edit: change `budgets:` in the config, then regenerate with\n"
        f"#   {command}\n"
    )


# Recording rules


def _spend_records(budget: SpendBudget, names: _Names) -> list[Rule]:
    selector = _selector(tenant=budget.tenant, job_type=budget.job_type)
    return [
        {
            "record": names.spend(window),
            "expr": f"sum(rate({names.cost}{selector}[{window}]))",
            "labels": _budget_labels(budget),
        }
        for window in WINDOWS
    ]


def _job_cost_records(names: _Names) -> list[Rule]:
    per_job = [
        {
            "record": names.cost_per_job(window),
            "expr": _ratio(names.cost, _JOBS + '{outcome="success"}', window),
        }
        for window in WINDOWS
    ]
    retries = {"record": RETRY_RATIO, "expr": _ratio(_ATTEMPTS, _JOBS, "1h") + "\n- 1"}
    failed = {"record": FAILED_SPEND_SHARE, "expr": _ratio(names.failed_cost, names.cost, "1h")}
    return [*per_job, retries, failed]


def _ratio(numerator: str, denominator: str, window: str) -> str:
    return (
        f"sum by (job_type) (rate({numerator}[{window}]))\n"
        f"/\n"
        f"sum by (job_type) (rate({denominator}[{window}]))"
    )


# Alerts on budgets


def _spend_rules(budget: SpendBudget, names: _Names, currency: str, url: str) -> list[Rule]:
    alerts = [_spend_alert(budget, burn, names, currency, url) for burn in SPEND_BURNS]
    return [*_spend_records(budget, names), *alerts]


def _job_cost_rules(budgets: BudgetsConfig, names: _Names, currency: str) -> list[Rule]:
    url = budgets.runbook_url
    per_job = [_job_cost_alert(b, names, currency, url) for b in budgets.cost_per_successful_job]
    ratios = [_retry_alert(budgets), _failed_spend_alert(budgets)]
    return [*_job_cost_records(names), *per_job, *ratios]


def _spend_alert(
    budget: SpendBudget, burn: BurnWindows, names: _Names, currency: str, url: str
) -> Rule:
    allowed = f"({_num(budget.amount)} / {_num(budget.period)})"
    selector = _selector(budget=budget.name)
    factor = _num(burn.factor)
    expr = (
        f"{names.spend(burn.long)}{selector} / {allowed} > {factor}\n"
        f"and\n"
        f"{names.spend(burn.short)}{selector} / {allowed} > {factor}"
    )
    period = _duration(budget.period)
    used = burn.factor * _seconds(burn.long) / budget.period
    return _alert(
        "CostprocSpendBudgetBurn",
        expr,
        burn.hold,
        {
            "severity": burn.severity,
            **_budget_labels(budget),
            "long_window": burn.long,
            "short_window": burn.short,
        },
        summary=f"Spend budget {budget.name} ({_scope(budget)}) is burning at "
        f"{_VALUE_1F}x over {burn.long}",
        description=f"Spend of {_scope(budget)} ran at {_VALUE_1F} times the rate budget "
        f"{budget.name} allows ({_num(budget.amount)} {currency} per {period}) over the last "
        f"{burn.long}, and above {factor}x over the last {burn.short} too. "
        f"At {factor}x, {burn.long} uses {_percent(used)} of the {period} budget.",
        url=url,
    )


def _job_cost_alert(budget: JobCostBudget, names: _Names, currency: str, url: str) -> Rule:
    selector = _selector(job_type=budget.job_type)
    jobs = _JOBS + _selector(job_type=budget.job_type, outcome="success")
    limit = f"({_num(budget.page_factor)} * {_num(budget.amount)})"
    expr = (
        f"{names.cost_per_job(JOB_COST_LONG)}{selector} > {limit}\n"
        f"and\n"
        f"{names.cost_per_job(JOB_COST_SHORT)}{selector} > {limit}\n"
        f"and on (job_type)\n"
        f"sum by (job_type) (rate({jobs}[{JOB_COST_SHORT}])) > {_num(budget.min_jobs_per_second)}"
    )
    amount = f"{_num(budget.amount)} {currency}"
    return _alert(
        "CostprocCostPerJobHigh",
        expr,
        JOB_COST_HOLD,
        {
            "severity": "page",
            "budget": "cost_per_successful_job",
            "job_type": budget.job_type,
            "long_window": JOB_COST_LONG,
            "short_window": JOB_COST_SHORT,
        },
        summary=f"A successful {budget.job_type} job costs {_VALUE_3G} {currency} over "
        f"{JOB_COST_LONG}, more than {_num(budget.page_factor)}x its budget of {amount}",
        description=f"Cost per successful {budget.job_type} job was {_VALUE_3G} {currency} "
        f"over the last {JOB_COST_LONG} and above {_num(budget.page_factor)}x its budget of "
        f"{amount} over the last {JOB_COST_SHORT} too, while more than "
        f"{_num(budget.min_jobs_per_second)} successful jobs per second finished: "
        f"a retry storm or a costlier release.",
        url=url,
    )


def _retry_alert(budgets: BudgetsConfig) -> Rule:
    threshold = budgets.retry_ratio_threshold
    return _alert(
        "CostprocRetryRatioHigh",
        f"{RETRY_RATIO} > {_num(threshold)}",
        RATIO_TICKET_HOLD,
        {"severity": "ticket"},
        summary=f"{_JOB_TYPE} jobs were retried {_VALUE_PCT} over 1h "
        f"(threshold {_percent(threshold)})",
        description=f"Attempts per finished {_JOB_TYPE} job, minus one, were "
        f"{_VALUE_PCT} over the last hour, above the {_percent(threshold)} threshold for "
        f"{RATIO_TICKET_HOLD}. Every retry is paid for again.",
        url=budgets.runbook_url,
    )


def _failed_spend_alert(budgets: BudgetsConfig) -> Rule:
    threshold = budgets.failed_spend_share_threshold
    return _alert(
        "CostprocFailedSpendShareHigh",
        f"{FAILED_SPEND_SHARE} > {_num(threshold)}",
        RATIO_TICKET_HOLD,
        {"severity": "ticket"},
        summary=f"{_VALUE_PCT} of {_JOB_TYPE} spend went to failed attempts "
        f"over 1h (threshold {_percent(threshold)})",
        description=f"Failed attempts took {_VALUE_PCT} of the spend on "
        f"{_JOB_TYPE} jobs over the last hour, above the {_percent(threshold)} "
        f"threshold for {RATIO_TICKET_HOLD}: money spent on work that produced nothing.",
        url=budgets.runbook_url,
    )


# costproc's own health


def _self_alerts(scrape_job: str) -> tuple[SelfAlert, ...]:
    up = "up" + _job_prefix(scrape_job)
    on = "{{ $labels.instance }}"
    reason = "{{ $labels.reason }}"
    label = "{{ $labels.label }}"
    watched = _quote("|".join(_FOLD_WATCHED))
    return (
        SelfAlert(
            "CostprocRejectingSpans",
            "ticket",
            "sum by (job, instance, reason) (rate(costproc_spans_rejected_total[15m]))\n"
            "/ ignoring (reason) group_left ()\n"
            "sum by (job, instance) (rate(costproc_spans_received_total[15m]))\n"
            "> 0.01",
            "15m",
            f"costproc {on} rejects {_VALUE_PCT} of spans ({reason})",
            f"costproc {on} rejected {_VALUE_PCT} of the spans it received over the last 15m "
            f"for {reason}, above 1%. Their cost is not counted: a sender emits invalid spans.",
        ),
        SelfAlert(
            "CostprocEvictingJobs",
            "ticket",
            "sum by (job, instance, reason) (increase(costproc_jobs_evicted_total[1h])) > 0",
            None,
            f"costproc {on} evicted {_VALUE_0F} open jobs in the last hour ({reason})",
            f"costproc {on} closed about {_VALUE_0F} open jobs early as evicted ({reason}) "
            f"over the last hour: their cost per job is split and understated.",
        ),
        SelfAlert(
            "CostprocLabelValuesFolded",
            "ticket",
            "sum by (job, instance, label) "
            f"(increase(costproc_label_values_folded_total{{label=~{watched}}}[1h])) > 0",
            "15m",
            f"costproc {on} folds {label} values into __other__ "
            f"({_VALUE_0F} observations in the last hour)",
            f'costproc {on} folded about {_VALUE_0F} observations into {label}="__other__" '
            f"over the last hour: their {label} was not among the first "
            f"exporters.prometheus.max_label_values values it kept. Budgets and alerts "
            f"keyed on {label} may be blind to the folded values.",
        ),
        SelfAlert(
            "CostprocRefusingRequests",
            "ticket",
            "sum by (job, instance, reason) (rate(costproc_requests_refused_total[5m])) > 0",
            "10m",
            f"costproc {on} refuses {_VALUE_3G} requests per second ({reason})",
            f"costproc {on} refused {_VALUE_3G} requests per second with a retryable status "
            f"({reason}) for 10m: senders retry, and drop spans once their queues fill.",
        ),
        SelfAlert(
            "CostprocDown",
            "page",
            f"absent({up} == 1)",
            "5m",
            f"No costproc target of scrape job {scrape_job} is up",
            f"Prometheus has scraped no costproc target of job {scrape_job} for 5m: "
            f"every cost budget alert is blind.",
        ),
        SelfAlert(
            "CostprocDown",
            "ticket",
            f"{up} == 0",
            "10m",
            f"costproc {on} is not being scraped",
            f"Prometheus failed to scrape costproc {on} (job {_JOB}) for 10m: "
            f"the cost of the jobs it sees is missing.",
        ),
    )


def _self_rule(alert: SelfAlert, url: str) -> Rule:
    return _alert(
        alert.name,
        alert.expr,
        alert.hold,
        {"severity": alert.severity},
        summary=alert.summary,
        description=alert.description,
        url=url,
    )


# Building blocks


def _alert(
    name: str,
    expr: str,
    hold: str | None,
    labels: dict[str, str],
    *,
    summary: str,
    description: str,
    url: str,
) -> Rule:
    held = {"for": hold} if hold is not None else {}
    annotations = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{url}#{name.lower()}",  # the runbook's heading for this alert
    }
    return {"alert": name, "expr": expr, **held, "labels": labels, "annotations": annotations}


def _budget_labels(budget: SpendBudget) -> dict[str, str]:
    labels = {"budget": budget.name}
    if budget.tenant is not None:
        labels["tenant"] = budget.tenant
    if budget.job_type is not None:
        labels["job_type"] = budget.job_type
    return labels


def _scope(budget: SpendBudget) -> str:
    parts = []
    if budget.tenant is not None:
        parts.append(f"tenant {budget.tenant}")
    if budget.job_type is not None:
        parts.append(f"job type {budget.job_type}")
    return ", ".join(parts) or "all tenants and job types"


def _selector(**matchers: str | None) -> str:
    """`{k="v",...}` for the matchers that are set, or nothing when none is."""
    parts = [f"{key}={_quote(value)}" for key, value in matchers.items() if value is not None]
    return "{" + ",".join(parts) + "}" if parts else ""


def _quote(value: str) -> str:
    # PromQL strings take Go's escapes, which JSON's are a subset of.
    return json.dumps(value, ensure_ascii=False)


def _job_prefix(name: str) -> str:
    """A matcher for the scrape job and its variants (costproc-gateway, costproc-sidecar)."""
    escaped = "".join("\\" + c if c in r"\.+*?()|[]{}^$" else c for c in name)
    return "{job=~" + _quote(escaped + ".*") + "}"


def _num(value: float) -> str:
    """A number as PromQL and people read it: 500000 and 0.000003, not 500000.0 and 3e-06."""
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _seconds(window: str) -> int:
    return int(window[:-1]) * _UNIT_SECONDS[window[-1]]


def _duration(seconds: float) -> str:
    """Seconds in the largest unit that divides them: 2592000 -> 30d."""
    for unit, size in sorted(_UNIT_SECONDS.items(), key=lambda item: -item[1]):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{_num(seconds)}s"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so PromQL reads as written."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)
