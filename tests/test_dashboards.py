"""The Grafana dashboards in deploy/grafana: their PromQL parses and names only what we export.

dashboard JSON -> every target's expr, Grafana variables substituted -> one rule file
    -> `promtool check rules` (parses) ; identifiers -> exported series or recorded rules
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from costproc.config.model import ForwardConfig, PrometheusConfig, TLSClientConfig
from costproc.export.forward import Forwarder
from costproc.export.metrics import CostMetrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
RULES = ROOT / "deploy" / "prometheus" / "costproc-rules.yaml"
DASHBOARDS = ("costproc-executive", "costproc-oncall", "costproc-debug")

# What Grafana puts in place of its built-in variables, for parsing only.
BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
NAME = re.compile(r"costproc[_:][a-zA-Z0-9_:]*")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)

# Queries each dashboard must keep, whatever else changes: the panel list.
REQUIRED = {
    "costproc-executive": [
        r"histogram_quantile\(0\.5, sum by \(le, job_type\) \(rate\(costproc_job_cost_usd_bucket",
        r"histogram_quantile\(0\.95, sum by \(le, job_type\) \(rate\(costproc_job_cost_usd_bucket",
        r"topk\(10, sum by \(job_type\) \(increase\(costproc_cost_usd_total",
        r"topk\(10, sum by \(tenant\) \(increase\(costproc_cost_usd_total",
        r"\$monthly_budget_usd",
    ],
    "costproc-oncall": [
        r"rate\(costproc_cost_usd_total\{[^}]*\}\[5m\]\)\) \* 2592000\s*/ \$monthly_budget_usd",
        r'costproc_jobs_total\{[^}]*outcome="success"',
        r"sum by \(outcome\) \(rate\(costproc_jobs_total",
        r"costproc:retry_ratio:rate1h|costproc_job_attempts_total",
        r"costproc:failed_attempt_spend_share:ratio_rate1h|costproc_failed_attempt_cost",
        r"costproc_spans_received_total",
        r"costproc_spans_rejected_total",
        r"costproc_jobs_evicted_total",
        r"costproc_jobs_inflight",
        r"costproc_price_table_info",
    ],
    "costproc-debug": [
        r"sum by \(component\) \(rate\(costproc_cost_usd_total",
        r"sum by \(service\) \(rate\(costproc_cost_usd_total",
        r"costproc_job_cpu_seconds_sum",
        r"costproc_job_memory_gb_seconds_sum",
        r"costproc_job_gpu_seconds_sum",
        r"costproc_job_egress_bytes_sum",
        r"costproc_egress_bytes_total",
    ],
}


def load(name: str) -> dict[str, Any]:
    path = GRAFANA / f"{name}.json"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves left out."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def substitute(expr: str, board: dict[str, Any]) -> str:
    """`expr` as Prometheus would get it: every Grafana variable replaced by a value."""
    defined = variables(board)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        var = defined.get(name)
        if var is None:
            pytest.fail(f"{board['uid']}: {expr!r} uses ${name}, which the dashboard lacks")
        if var["type"] == "query":
            return str(var.get("allValue") or ".*")
        if var["type"] in ("textbox", "constant"):
            return str(var["query"])
        return str(var["current"]["value"])

    return VARIABLE.sub(value, expr)


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's selector."""
    found: list[tuple[str, str]] = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
            found.append((where, substitute(target["expr"], board)))
    for var in variables(board).values():
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["definition"])
            assert match, f"variable {var['name']}: expected label_values(selector, label)"
            found.append((f"variable {var['name']}", substitute(match.group(1), board)))
    return found


def exported_series() -> set[str]:
    """Every series name costproc can expose (USD), forwarding's own metrics included."""
    registry = CollectorRegistry()
    CostMetrics(PrometheusConfig(), "USD", registry)
    forward = ForwardConfig(endpoint="127.0.0.1:4317", tls=TLSClientConfig(insecure=True))
    Forwarder(forward, registry, "USD")
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]
    }


def recorded_rules() -> set[str]:
    """Names recorded by the shipped rule file; none while it does not exist."""
    if not RULES.is_file():
        return set()
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {
        rule["record"]
        for group in doc.get("groups", [])
        for rule in group.get("rules", [])
        if "record" in rule
    }


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install Prometheus (Debian: apt-get install prometheus)"
        )
    return path


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_shape(name: str) -> None:
    board = load(name)
    assert board["uid"] == name
    assert board["schemaVersion"] >= 36
    assert "costproc" in board["tags"]
    defined = variables(board)
    assert defined["datasource"]["type"] == "datasource"
    assert defined["datasource"]["query"] == "prometheus"
    for label in ("job_type", "tenant"):
        var = defined[label]
        assert var["type"] == "query"
        assert re.fullmatch(
            rf"label_values\(costproc_jobs_total(\{{.*\}})?, {label}\)", var["definition"]
        ), var["definition"]
        assert var["includeAll"] and var["allValue"] == ".*"
    nested = [p for row in board["panels"] if row["type"] == "row" for p in row["panels"]]
    ids = [p["id"] for p in board["panels"] + nested]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_query_parses(name: str, promtool: str, tmp_path: Path) -> None:
    board = load(name)
    slug = name.replace("-", "_")
    groups = [
        {"name": where, "rules": [{"record": f"dashboard:{slug}:query{i}", "expr": expr}]}
        for i, (where, expr) in enumerate(queries(board))
    ]
    rules = tmp_path / f"{name}.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        f"{name}: promtool rejects a query:\n{result.stdout}{result.stderr}"
    )
    assert f"SUCCESS: {len(groups)} rules found" in result.stdout, result.stdout


@pytest.mark.parametrize("name", DASHBOARDS)
def test_queries_name_only_exported_series_or_recorded_rules(name: str) -> None:
    allowed = exported_series() | recorded_rules()
    unknown = {
        f"{where}: {ident}"
        for where, expr in queries(load(name))
        for ident in NAME.findall(expr)
        if ident not in allowed
    }
    assert not unknown, "names costproc neither exports nor records:\n" + "\n".join(sorted(unknown))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_keeps_its_panels(name: str) -> None:
    exprs = "\n".join(t["expr"] for p in panels(load(name)) for t in p["targets"])
    missing = [pattern for pattern in REQUIRED[name] if not re.search(pattern, exprs)]
    assert not missing, f"{name} lost the queries matching {missing}"


def test_debug_links_exemplars_to_traces() -> None:
    board = load("costproc-debug")
    assert "trace_url" in variables(board)
    linked = [
        panel
        for panel in panels(board)
        if any(
            t.get("exemplar") and "costproc_job_cost_usd_bucket" in t["expr"]
            for t in panel["targets"]
        )
    ]
    assert linked, "no panel asks for exemplars of costproc_job_cost_usd_bucket"
    for panel in linked:
        urls = [link["url"] for link in panel["fieldConfig"]["defaults"].get("links", [])]
        assert "${trace_url}${__data.fields.trace_id}" in urls, panel["title"]


def test_exported_series_cover_the_spec() -> None:
    # Guards the allow-list itself: it must hold the names the spec promises.
    assert {
        "costproc_jobs_total",
        "costproc_job_attempts_total",
        "costproc_job_cost_usd_bucket",
        "costproc_cost_usd_total",
        "costproc_failed_attempt_cost_usd_total",
        "costproc_job_duration_seconds_count",
        "costproc_egress_bytes_total",
        "costproc_spans_received_total",
        "costproc_jobs_inflight",
        "costproc_price_table_info",
        "costproc_forward_dropped_total",
    } <= exported_series()
