"""costproc rules: generated rule files pass promtool, alert as unit-tested, never drift."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproc.cli import main
from costproc.config import Config, load_config
from costproc.rules import generate_rules, render_rules

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "prometheus" / "costproc-rules.yaml"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "prometheus").glob("*_test.yaml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/costproc/costproc/blob/main/docs/runbook.md"
MakeConfig = Callable[[Mapping[str, Any]], Config]
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

# (severity, long window, short window, burn factor, for): the multi-window recipe.
SPEND_BURNS = [
    ("page", "1h", "5m", "14.4", "2m"),
    ("page", "6h", "30m", "6", "15m"),
    ("ticket", "1d", "2h", "3", "1h"),
    ("ticket", "3d", "6h", "1", "3h"),
]

NO_BUDGETS = {"budgets": {"spend": [], "cost_per_successful_job": []}}
PER_TENANT = {
    "budgets": {
        "spend": [
            {"tenant": "acme", "amount": 1000, "period": "168h"},
            {"name": "globex-daily", "tenant": "globex", "amount": 40.5, "period": "24h"},
        ],
        "cost_per_successful_job": [],
    }
}
PER_JOB_TYPE = {
    "budgets": {
        "spend": [
            {"job_type": "inference", "amount": 300, "period": "24h"},
            {"tenant": "acme", "job_type": "checkout", "amount": 50, "period": "1h"},
        ],
        "cost_per_successful_job": [
            {"job_type": "batch-item", "amount": 0.000002, "page_factor": 5},
        ],
    }
}
EUR = {
    "pricing": {"currency": "EUR"},
    "budgets": {
        "spend": [{"name": "eu", "amount": 20000, "period": "720h"}],
        "cost_per_successful_job": [{"job_type": "inference", "amount": 0.01}],
        "runbook_url": "https://wiki.example.com/costproc/runbook",
    },
}
# Label values PromQL must escape: a quote and a backslash.
ODD_NAMES = {
    "budgets": {
        "spend": [{"tenant": 'a"b\\c', "amount": 10, "period": "1h"}],
        "cost_per_successful_job": [{"job_type": 'x"y', "amount": 1}],
    }
}
CONFIGS = {
    "no-budgets": NO_BUDGETS,
    "per-tenant": PER_TENANT,
    "per-job-type": PER_JOB_TYPE,
    "eur": EUR,
    "odd-names": ODD_NAMES,
}


def promtool() -> str:
    """The promtool binary; its absence fails the test (not skips it): CI must run these."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install --no-install-recommends prometheus), as CI does"
        )
    return path


def run_promtool(*args: str | Path) -> str:
    """Run promtool; fail the test with its output unless it exits 0."""
    done = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def rules_of(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for group in doc["groups"]:
        yield from group["rules"]


def alerts(doc: Mapping[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    return [r for r in rules_of(doc) if "alert" in r and name in (None, r["alert"])]


def record(doc: Mapping[str, Any], name: str, **labels: str) -> dict[str, Any]:
    """The one recording rule named `name` whose labels include `labels`."""
    found = [
        r
        for r in rules_of(doc)
        if r.get("record") == name and labels.items() <= r.get("labels", {}).items()
    ]
    assert len(found) == 1, f"{len(found)} recording rules {name} with {labels}"
    return found[0]


@pytest.fixture(scope="module")
def bundled() -> Config:
    return load_config()


# promtool


def test_shipped_rules_pass_promtool_check() -> None:
    out = run_promtool("check", "rules", SHIPPED)
    assert "SUCCESS" in out


@pytest.mark.parametrize("overlay", CONFIGS.values(), ids=CONFIGS.keys())
def test_generated_rules_pass_promtool_check(
    make_config: MakeConfig,
    overlay: Mapping[str, Any],
    tmp_path: Path,
) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text(render_rules(make_config(overlay), "costproc.gw(eu)"), encoding="utf-8")
    out = run_promtool("check", "rules", file)
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass() -> None:
    assert len(PROMTOOL_TESTS) >= 2, "tests/prometheus/*_test.yaml went missing"
    out = run_promtool("test", "rules", *PROMTOOL_TESTS)
    assert out.count("SUCCESS") == len(PROMTOOL_TESTS), out


def test_shipped_rules_are_generated_from_the_bundled_config(bundled: Config) -> None:
    assert SHIPPED.read_text(encoding="utf-8") == render_rules(bundled), (
        "deploy/prometheus/costproc-rules.yaml is stale: regenerate it with "
        "`costproc rules > deploy/prometheus/costproc-rules.yaml`"
    )


# generate_rules


def test_recording_rules_cover_every_window(bundled: Config) -> None:
    doc = generate_rules(bundled)
    for window in WINDOWS:
        total = record(doc, f"costproc:spend_usd:rate{window}", budget="total")
        assert total["expr"] == f"sum(rate(costproc_cost_usd_total[{window}]))"
        per_job = record(doc, f"costproc:cost_per_successful_job_usd:ratio_rate{window}")
        assert f'costproc_jobs_total{{outcome="success"}}[{window}]' in per_job["expr"]
        assert per_job["expr"].count("sum by (job_type)") == 2
    assert "costproc_job_attempts_total[1h]" in record(doc, "costproc:retry_ratio:rate1h")["expr"]
    share = record(doc, "costproc:failed_attempt_spend_share:ratio_rate1h")["expr"]
    assert "costproc_failed_attempt_cost_usd_total[1h]" in share


@pytest.mark.parametrize(
    ("budget", "selector", "labels"),
    [
        ({"name": "all", "amount": 1}, "", {"budget": "all"}),
        (
            {"tenant": "acme", "amount": 1},
            '{tenant="acme"}',
            {"budget": "spend-acme", "tenant": "acme"},
        ),
        (
            {"job_type": "inference", "amount": 1},
            '{job_type="inference"}',
            {"budget": "spend-inference", "job_type": "inference"},
        ),
        (
            {"tenant": "acme", "job_type": "checkout", "amount": 1},
            '{tenant="acme",job_type="checkout"}',
            {"budget": "spend-acme-checkout", "tenant": "acme", "job_type": "checkout"},
        ),
    ],
    ids=["total", "tenant", "job-type", "tenant-and-job-type"],
)
def test_spend_records_select_and_label_by_budget_scope(
    make_config: MakeConfig,
    budget: dict[str, Any],
    selector: str,
    labels: dict[str, str],
) -> None:
    config = make_config({"budgets": {"spend": [budget]}})
    doc = generate_rules(config)
    rule = record(doc, "costproc:spend_usd:rate6h", budget=labels["budget"])
    assert rule["expr"] == f"sum(rate(costproc_cost_usd_total{selector}[6h]))"
    assert rule["labels"] == labels


def test_spend_alerts_burn_each_window_pair(make_config: MakeConfig) -> None:
    config = make_config(PER_TENANT)
    doc = generate_rules(config)
    got = alerts(doc, "CostprocSpendBudgetBurn")
    assert len(got) == 2 * len(SPEND_BURNS)
    mine = [a for a in got if a["labels"]["budget"] == "globex-daily"]
    for alert, (severity, long, short, factor, hold) in zip(mine, SPEND_BURNS, strict=True):
        assert alert["labels"] == {
            "severity": severity,
            "budget": "globex-daily",
            "tenant": "globex",
            "long_window": long,
            "short_window": short,
        }
        assert alert["for"] == hold
        rate = 'costproc:spend_usd:rate{}{{budget="globex-daily"}} / (40.5 / 86400) > ' + factor
        assert alert["expr"] == f"{rate.format(long)}\nand\n{rate.format(short)}"
        assert "40.5 USD per 1d" in alert["annotations"]["description"]
        assert "tenant globex" in alert["annotations"]["summary"]


def test_cost_per_job_alert_needs_both_windows_and_flowing_jobs(bundled: Config) -> None:
    (alert,) = [
        a for a in alerts(generate_rules(bundled)) if a["labels"].get("job_type") == "checkout"
    ]
    assert alert["alert"] == "CostprocCostPerJobHigh"
    assert alert["for"] == "5m"
    assert alert["labels"]["severity"] == "page"
    assert alert["expr"].splitlines() == [
        'costproc:cost_per_successful_job_usd:ratio_rate1h{job_type="checkout"} > (3 * 0.004)',
        "and",
        'costproc:cost_per_successful_job_usd:ratio_rate5m{job_type="checkout"} > (3 * 0.004)',
        "and on (job_type)",
        'sum by (job_type) (rate(costproc_jobs_total{job_type="checkout",outcome="success"}[5m]))'
        " > 0.05",
    ]


def test_ratio_tickets_use_configured_thresholds(make_config: MakeConfig) -> None:
    config = make_config(
        {"budgets": {"retry_ratio_threshold": 0.5, "failed_spend_share_threshold": 0.25}}
    )
    doc = generate_rules(config)
    (retry,) = alerts(doc, "CostprocRetryRatioHigh")
    (failed,) = alerts(doc, "CostprocFailedSpendShareHigh")
    assert retry["expr"] == "costproc:retry_ratio:rate1h > 0.5"
    assert failed["expr"] == "costproc:failed_attempt_spend_share:ratio_rate1h > 0.25"
    assert "threshold 50%" in retry["annotations"]["summary"]
    assert "threshold 25%" in failed["annotations"]["summary"]
    assert retry["labels"] == failed["labels"] == {"severity": "ticket"}


def test_without_budgets_only_generic_rules_remain(make_config: MakeConfig) -> None:
    doc = generate_rules(make_config(NO_BUDGETS))
    assert [g["name"] for g in doc["groups"]] == ["costproc-job-cost", "costproc-self"]
    names = {a["alert"] for a in alerts(doc)}
    assert names == {
        "CostprocRetryRatioHigh",
        "CostprocFailedSpendShareHigh",
        "CostprocRejectingSpans",
        "CostprocEvictingJobs",
        "CostprocLabelValuesFolded",
        "CostprocRefusingRequests",
        "CostprocDown",
    }


def test_currency_names_metrics_and_annotations(make_config: MakeConfig) -> None:
    text = render_rules(make_config(EUR))
    assert "usd" not in text.lower()
    doc = yaml.safe_load(text)
    assert record(doc, "costproc:spend_eur:rate3d", budget="eu")["expr"] == (
        "sum(rate(costproc_cost_eur_total[3d]))"
    )
    record(doc, "costproc:cost_per_successful_job_eur:ratio_rate1h")
    assert "costproc_failed_attempt_cost_eur_total" in text
    (per_job,) = alerts(doc, "CostprocCostPerJobHigh")
    assert "0.01 EUR" in per_job["annotations"]["summary"]


def test_scrape_job_is_a_prefix_with_regex_escaped(bundled: Config) -> None:
    default = {
        a["labels"]["severity"]: a["expr"] for a in alerts(generate_rules(bundled), "CostprocDown")
    }
    assert default == {
        "page": 'absent(up{job=~"costproc.*"} == 1)',
        "ticket": 'up{job=~"costproc.*"} == 0',
    }
    (page, _) = alerts(generate_rules(bundled, scrape_job="cost.proc"), "CostprocDown")
    assert page["expr"] == 'absent(up{job=~"cost\\\\.proc.*"} == 1)'
    with pytest.raises(ValueError, match="scrape_job"):
        generate_rules(bundled, scrape_job="")


def test_folded_labels_ticket_watches_the_labels_budgets_select_on(bundled: Config) -> None:
    (alert,) = alerts(generate_rules(bundled), "CostprocLabelValuesFolded")
    assert alert["expr"] == (
        "sum by (job, instance, label) (increase(costproc_label_values_folded_total"
        '{label=~"job_type|tenant|service"}[1h])) > 0'
    )
    assert alert["for"] == "15m"
    assert alert["labels"] == {"severity": "ticket"}
    notes = alert["annotations"]
    assert "{{ $labels.label }}" in notes["summary"]
    assert "Budgets and alerts keyed on {{ $labels.label }} may be blind" in notes["description"]


def test_label_values_are_escaped(make_config: MakeConfig) -> None:
    doc = generate_rules(make_config(ODD_NAMES))
    (spend,) = {r["expr"] for r in rules_of(doc) if r.get("record") == "costproc:spend_usd:rate5m"}
    assert spend == 'sum(rate(costproc_cost_usd_total{tenant="a\\"b\\\\c"}[5m]))'


def test_every_alert_is_annotated_and_has_a_runbook_section(bundled: Config) -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    got = alerts(generate_rules(bundled))
    # 2 spend budgets x 4 window pairs, 3 job-cost budgets, 2 ratio tickets, 6 on costproc
    assert len(got) == 2 * 4 + 3 + 2 + 6
    for alert in got:
        notes = alert["annotations"]
        name = alert["alert"]
        assert notes["runbook_url"] == f"{RUNBOOK_URL}#{name.lower()}"
        assert name.lower() in anchors, f"docs/runbook.md has no section for {name}"
        assert alert["labels"]["severity"] in {"page", "ticket"}
        if name != "CostprocDown":  # its value is only up's 0, or absent()'s 1
            assert "{{ $value" in notes["summary"]
            assert "{{ $value" in notes["description"]


def test_rules_read_only_documented_metrics(make_config: MakeConfig) -> None:
    allowed = {
        "costproc_jobs_total",
        "costproc_job_attempts_total",
        "costproc_cost_usd_total",
        "costproc_failed_attempt_cost_usd_total",
        "costproc_spans_received_total",
        "costproc_spans_rejected_total",
        "costproc_jobs_evicted_total",
        "costproc_requests_refused_total",
        "costproc_label_values_folded_total",
    }
    text = render_rules(make_config(PER_JOB_TYPE))
    exprs = [r["expr"] for r in rules_of(yaml.safe_load(text))]
    used = {m for e in exprs for m in re.findall(r"\bcostproc_[a-z_]+", e)}
    assert used <= allowed
    records = {r["record"] for r in rules_of(yaml.safe_load(text)) if "record" in r}
    assert all(re.fullmatch(r"costproc:[a-z_]+:[a-z0-9_]+", r) for r in records), records


# render_rules and the CLI


def test_render_names_its_source_and_how_to_regenerate(bundled: Config) -> None:
    shipped = render_rules(bundled)
    assert shipped.startswith("# ")
    assert "the bundled config/costproc.yaml" in shipped.split("groups:")[0]
    assert "costproc rules > deploy/prometheus/costproc-rules.yaml" in shipped
    mine = render_rules(bundled, "costproc-gw", config_path="prod.yaml")
    assert "costproc rules --config prod.yaml --scrape-job costproc-gw > FILE" in mine
    assert yaml.safe_load(shipped) == generate_rules(bundled)
    assert render_rules(bundled) == shipped


def test_cli_writes_the_rules(
    bundled: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rules.yaml"
    assert main(["rules", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_rules(bundled)
    assert main(["rules", "--scrape-job", "gw"]) == 0
    assert capsys.readouterr().out == render_rules(bundled, "gw")


def test_cli_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets: {spend: [{tenant: acme}]}\n", encoding="utf-8")
    assert main(["rules", "--config", str(bad)]) == 1
    assert "budgets.spend[0].amount" in capsys.readouterr().err
