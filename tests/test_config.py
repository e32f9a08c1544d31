"""parse_config and load_config: typed values, and every problem named by its key path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from costproc.config import Config, default_config_path, load_config, parse_config
from costproc.config.model import Match
from costproc.errors import ConfigError

BUNDLED = Path(__file__).resolve().parents[1] / "config" / "costproc.yaml"

# One valid price table; cases add or replace sections around it.
PRICING = """
pricing:
  tables:
    - version: "2026-01"
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_second: 0.00001
      memory_gb_second: 0.000001
      gpu_second: 0.0003
      egress_per_gb: {internet: 0.09}
"""


def problems(text: str) -> list[str]:
    """The problems parse_config reports for `text`; fails the test if it reports none."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def key_paths(text: str) -> set[str]:
    """The key paths of the problems reported for `text` (each problem is "path: reason")."""
    return {p.split(": ", 1)[0] for p in problems(text)}


def table(extra: str = "", **prices: float | str) -> str:
    """A config with one table whose resource prices are exactly `prices` plus `extra`."""
    lines = "".join(f"      {k}: {v}\n" for k, v in prices.items())
    return f"""
pricing:
  tables:
    - version: v1
      effective_from: 2026-01-01T00:00:00Z
      egress_per_gb: {{internet: 0.09}}
{lines}{extra}"""


# -- the bundled file -------------------------------------------------------------------


def test_bundled_config_loads_with_documented_values() -> None:
    config = load_config(BUNDLED)
    assert load_config() == config  # no path: the bundled default
    assert default_config_path().samefile(BUNDLED)
    assert (config.rollup.completion_wait, config.rollup.max_wait) == (2.0, 300.0)
    assert config.rollup.tick_interval == 0.25
    assert config.grpc.endpoint == "0.0.0.0:4317"
    assert config.prometheus.endpoint == "0.0.0.0:9464"
    assert config.health.endpoint == "0.0.0.0:13133"
    assert config.pricing.currency == "USD"
    assert config.usage.services["checkout"].concurrency == 8.0
    (only,) = config.pricing.tables
    (raw,) = yaml.safe_load(BUNDLED.read_text(encoding="utf-8"))["pricing"]["tables"]
    assert only.version == raw["version"]
    assert only.effective_from_ns == int(raw["effective_from"].timestamp()) * 10**9
    for hourly, per_second in [
        ("cpu_core_hour", only.prices.cpu_core_second),
        ("memory_gb_hour", only.prices.memory_gb_second),
        ("gpu_hour", only.prices.gpu_second),
    ]:
        assert per_second == pytest.approx(raw[hourly] / 3600, rel=1e-15), hourly
    assert only.egress_per_gb == raw["egress_per_gb"]
    assert len(only.metered) == len(raw["metered"])
    assert only.metered[0].quantity_attribute == "gen_ai.usage.input_tokens"
    assert only.metered[-1].quantity_attribute is None  # one per matching span
    assert len(only.overrides) == len(raw["overrides"])


def test_load_config_reads_the_file_it_is_given(tmp_path: Path) -> None:
    file = tmp_path / "costproc.yaml"
    file.write_text(PRICING + "rollup: {completion_wait: 750ms}\n", encoding="utf-8")
    assert load_config(file).rollup.completion_wait == 0.75
    assert load_config(str(file)).rollup.completion_wait == 0.75


def test_load_config_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{missing}: cannot read")


def test_invalid_yaml_is_one_problem_with_its_position() -> None:
    (problem,) = problems("rollup:\n  completion_wait: [2s\n")
    assert problem.startswith("not valid YAML")
    assert "line" in problem


# -- prices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        pytest.param(
            {"cpu_core_hour": 0.036, "memory_gb_hour": 1.08, "gpu_hour": 0.9},
            (0.00001, 0.0003, 0.00025),
            id="hourly",
        ),
        pytest.param(
            {"cpu_core_second": 0.00001, "memory_gb_second": 0.0003, "gpu_second": 0.00025},
            (0.00001, 0.0003, 0.00025),
            id="per-second",
        ),
        pytest.param(
            {"cpu_core_second": "1e-5", "memory_gb_second": "3E-4", "gpu_hour": "9e-1"},
            (0.00001, 0.0003, 0.00025),
            id="exponent-without-a-dot",
        ),
        pytest.param(
            {"cpu_core_hour": 36, "memory_gb_second": 0, "gpu_hour": 0},
            (0.01, 0.0, 0.0),
            id="integers-and-zero",
        ),
    ],
)
def test_resource_prices_are_per_second_exactly(
    prices: dict[str, float | str], expected: tuple[float, float, float]
) -> None:
    (parsed,) = parse_config(table(**prices)).pricing.tables
    # Exact equality on purpose: 0.036 / 3600 in binary floats is 9.999999999999999e-06.
    got = (parsed.prices.cpu_core_second, parsed.prices.memory_gb_second, parsed.prices.gpu_second)
    assert got == expected


def test_override_hourly_prices_are_converted_exactly() -> None:
    extra = """      overrides:
        - match: {cloud.region: eu-west-1}
          cpu_core_hour: 0.072
"""
    config = parse_config(table(extra, cpu_core_hour=0.036, memory_gb_hour=0, gpu_hour=0))
    (parsed,) = config.pricing.tables
    (override,) = parsed.overrides
    assert override.prices.cpu_core_second == 0.00002
    assert override.prices.memory_gb_second is None  # an override leaves other prices alone
    assert override.multiplier == 1.0


@pytest.mark.parametrize(
    ("text", "path"),
    [
        pytest.param(
            table(cpu_core_second=0.00001, cpu_core_hour=0.036, memory_gb_hour=0, gpu_hour=0),
            "pricing.tables[0].cpu_core_hour",
            id="cpu",
        ),
        pytest.param(
            table(cpu_core_hour=0.036, memory_gb_hour=1.08, memory_gb_second=0.0003, gpu_hour=0),
            "pricing.tables[0].memory_gb_hour",
            id="memory-hour-written-first",
        ),
        pytest.param(
            table(
                "      overrides:\n"
                "        - match: {costproc.capacity_type: spot}\n"
                "          gpu_second: 1\n"
                "          gpu_hour: 3600\n",
                cpu_core_hour=0.036,
                memory_gb_hour=0,
                gpu_hour=0,
            ),
            "pricing.tables[0].overrides[0].gpu_hour",
            id="override-gpu",
        ),
    ],
)
def test_per_second_and_hourly_forms_together_are_an_error(text: str, path: str) -> None:
    (problem,) = problems(text)
    assert problem.startswith(f"{path}: ")
    assert "per second and per hour" in problem


# -- every problem at once --------------------------------------------------------------

MANY_PROBLEMS = """
receivers:
  otlp:
    grpc:
      endpoint: 0.0.0.0:70000
rollup:
  completion_wait: 2 minutes
  compleiton_wait: 2s
usage:
  services:
    checkout: {cpu_cores: 2, concurrency: 0}
pricing:
  currency: dollars
  tables:
    - version: "2026-01"
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_hour: 0.036
      memory_gb_hour: 0
      gpu_hour: 0
      egress_per_gb: {internet: -0.09, same_zone: 0}
    - version: "2026-02"
      effective_from: 2026-02-01T00:00:00Z
      memory_gb_hour: 0
      gpu_hour: 0
      egress_per_gb: {internet: 0.09}
      metered:
        - name: stripe
          match: {server.address: {regex: 'api\\.stripe\\.com['}}
          unit_price: 0.3
    - version: "2026-01"
      effective_from: 2026-03-01T00:00:00Z
      cpu_core_hour: 0.036
      memory_gb_hour: 0
      gpu_hour: 0
      egress_per_gb: {internet: 0.09}
exporters:
  prometheus:
    buckets:
      cost: [0.01, 0.1, 0.05]
extensions:
  health_check:
    endpoint: localhost
"""


def test_every_problem_is_reported_with_its_key_path() -> None:
    reported = problems(MANY_PROBLEMS)
    paths = [p.split(": ", 1)[0] for p in reported]
    assert sorted(paths) == sorted(
        [
            "receivers.otlp.grpc.endpoint",
            "rollup.completion_wait",
            "rollup.compleiton_wait",
            "usage.services.checkout.concurrency",
            "pricing.currency",
            "pricing.tables[0].egress_per_gb.internet",
            "pricing.tables[1].cpu_core_second",
            "pricing.tables[1].metered[0].match.server.address.regex",
            "pricing.tables[2].version",
            "exporters.prometheus.buckets.cost",
            "extensions.health_check.endpoint",
        ]
    )
    by_path = dict(p.split(": ", 1) for p in reported)
    assert "'2 minutes'" in by_path["rollup.completion_wait"]  # the bad value is shown
    assert "unknown key" in by_path["rollup.compleiton_wait"]
    assert "pricing.tables[0]" in by_path["pricing.tables[2].version"]  # where it was first


def test_problems_are_reported_in_a_stable_order() -> None:
    assert problems(MANY_PROBLEMS) == problems(MANY_PROBLEMS)


@pytest.mark.parametrize(
    ("text", "paths"),
    [
        pytest.param(PRICING + "recievers: {}\n", {"recievers"}, id="unknown-top-level-key"),
        pytest.param("rollup: {}\n", {"pricing.tables"}, id="no-price-table"),
        pytest.param("pricing: {tables: []}\n", {"pricing.tables"}, id="empty-tables"),
        pytest.param(
            PRICING + "rollup: {untagged_traces: keep}\n",
            {"rollup.untagged_traces"},
            id="untagged-traces-choice",
        ),
        pytest.param(
            PRICING + "rollup: {completion_wait: 10s, max_wait: 5s}\n",
            {"rollup.max_wait"},
            id="max-wait-below-completion-wait",
        ),
        pytest.param(
            PRICING + "rollup: {tick_interval: 0s}\n", {"rollup.tick_interval"}, id="zero-tick"
        ),
        pytest.param(
            PRICING + "rollup: {max_inflight_traces: 1e5, local_roots: maybe}\n",
            {"rollup.max_inflight_traces", "rollup.local_roots"},
            id="integer-and-flag",
        ),
        pytest.param(
            PRICING + "rollup: {job_id_attributes: []}\n",
            {"rollup.job_id_attributes"},
            id="empty-job-id-attributes",
        ),
        pytest.param(
            PRICING + "usage: {defaults: {cpu_cores: -1, gpus: .nan}}\n",
            {"usage.defaults.cpu_cores", "usage.defaults.gpus"},
            id="negative-and-nan-allocation",
        ),
        pytest.param(
            PRICING + "usage: {egress: {rules: [{match: {peer.service: null}, class: x}]}}\n",
            {"usage.egress.rules[0].match.peer.service"},
            id="match-on-null",
        ),
        pytest.param(
            PRICING + "exporters: {prometheus: {max_label_values: 0, buckets: {usage: 5}}}\n",
            {"exporters.prometheus.max_label_values", "exporters.prometheus.buckets.usage"},
            id="prometheus-limits",
        ),
        pytest.param(
            table(cpu_core_hour=0.036, memory_gb_hour=0).replace("version: v1", "version: ''"),
            {"pricing.tables[0].version", "pricing.tables[0].gpu_second"},
            id="empty-version-and-missing-gpu-price",
        ),
        pytest.param(
            table(cpu_core_hour=1, memory_gb_hour=0, gpu_hour=0).replace(
                "effective_from: 2026-01-01T00:00:00Z", "effective_from: next tuesday"
            ),
            {"pricing.tables[0].effective_from"},
            id="bad-effective-from",
        ),
        pytest.param(
            table(
                "      metered:\n"
                "        - {name: a, match: {x: 1}, quantity: 2, unit_price: 1}\n"
                "        - {name: a, match: {x: 1}, quantity: true, unit_price: 1}\n"
                "        - {name: b, match: {}, unit_price: -1}\n",
                cpu_core_hour=1,
                memory_gb_hour=0,
                gpu_hour=0,
            ),
            {
                "pricing.tables[0].metered[0].quantity",
                "pricing.tables[0].metered[1].quantity",
                "pricing.tables[0].metered[1].name",
                "pricing.tables[0].metered[2].match",
                "pricing.tables[0].metered[2].unit_price",
            },
            id="metered-rules",
        ),
        pytest.param(
            table(
                "      overrides: [{match: {cloud.region: eu-west-1}}]\n",
                cpu_core_hour=1,
                memory_gb_hour=0,
                gpu_hour=0,
            ),
            {"pricing.tables[0].overrides[0]"},
            id="override-sets-nothing",
        ),
        pytest.param(
            PRICING + '    - {version: "2026-02", effective_from: 2026-01-01T00:00:00Z,'
            " cpu_core_hour: 1, memory_gb_hour: 0, gpu_hour: 0, egress_per_gb: {internet: 0}}\n",
            {"pricing.tables[1].effective_from"},
            id="same-effective-from",
        ),
    ],
)
def test_each_problem_is_named(text: str, paths: set[str]) -> None:
    assert key_paths(text) == paths


# -- ${env:VAR} -------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Set COSTPROC_TEST_* variables for one test; COSTPROC_TEST_UNSET is never set."""
    monkeypatch.delenv("COSTPROC_TEST_UNSET", raising=False)
    monkeypatch.setenv("COSTPROC_TEST_PREFIX", "acme")
    monkeypatch.setenv("COSTPROC_TEST_COUNT", "5000")
    monkeypatch.setenv("COSTPROC_TEST_SIZE", "4.5")
    monkeypatch.setenv("COSTPROC_TEST_HOST", "127.0.0.1")
    monkeypatch.setenv("COSTPROC_TEST_PORT", "4319")
    monkeypatch.setenv("COSTPROC_TEST_NESTED", "${env:COSTPROC_TEST_PREFIX}")
    return monkeypatch


@pytest.mark.parametrize(
    ("section", "read", "expected"),
    [
        pytest.param(
            "rollup: {tenant_attribute: '${env:COSTPROC_TEST_PREFIX}.tenant'}",
            lambda c: c.rollup.tenant_attribute,
            "acme.tenant",
            id="inside-a-string",
        ),
        pytest.param(
            "receivers: {otlp: {grpc: {endpoint: "
            "'${env:COSTPROC_TEST_HOST}:${env:COSTPROC_TEST_PORT}'}}}",
            lambda c: c.grpc.endpoint,
            "127.0.0.1:4319",
            id="two-in-one-string",
        ),
        pytest.param(
            "rollup: {max_inflight_traces: '${env:COSTPROC_TEST_COUNT}'}",
            lambda c: c.rollup.max_inflight_traces,
            5000,
            id="whole-value-is-an-int",
        ),
        pytest.param(
            "receivers: {otlp: {grpc: {max_recv_msg_size_mib: '${env:COSTPROC_TEST_SIZE}'}}}",
            lambda c: c.grpc.max_recv_msg_size_mib,
            4.5,
            id="whole-value-is-a-float",
        ),
        pytest.param(
            "exporters: {prometheus: {max_label_values: '${env:COSTPROC_TEST_UNSET:-250}'}}",
            lambda c: c.prometheus.max_label_values,
            250,
            id="default-when-unset-typed",
        ),
        pytest.param(
            "exporters: {prometheus: {endpoint: '127.0.0.1:${env:COSTPROC_TEST_PORT:-9999}'}}",
            lambda c: c.prometheus.endpoint,
            "127.0.0.1:4319",
            id="set-variable-beats-default",
        ),
        pytest.param(
            "rollup: {job_type_attribute: '${env:COSTPROC_TEST_NESTED}'}",
            lambda c: c.rollup.job_type_attribute,
            "${env:COSTPROC_TEST_PREFIX}",
            id="values-are-not-expanded-twice",
        ),
        pytest.param(
            "# endpoint: ${env:COSTPROC_TEST_UNSET}\nrollup: {completion_wait: 1s}",
            lambda c: c.rollup.completion_wait,
            1.0,
            id="ignored-in-a-comment",
        ),
    ],
)
def test_env_expansion(
    env: pytest.MonkeyPatch, section: str, read: Callable[[Config], object], expected: object
) -> None:
    got = read(parse_config(PRICING + section + "\n"))
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("section", "path"),
    [
        pytest.param(
            "rollup: {tenant_attribute: '${env:COSTPROC_TEST_UNSET}'}",
            "rollup.tenant_attribute",
            id="whole-value",
        ),
        pytest.param(
            "rollup: {job_id_attributes: [job.id, 'x.${env:COSTPROC_TEST_UNSET}']}",
            "rollup.job_id_attributes[1]",
            id="inside-a-list-item",
        ),
    ],
)
def test_unset_env_variable_is_named_with_its_key_path(
    env: pytest.MonkeyPatch, section: str, path: str
) -> None:
    (problem,) = problems(PRICING + section + "\n")
    assert problem.startswith(f"{path}: ")
    assert "COSTPROC_TEST_UNSET" in problem


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        pytest.param("500ms", 0.5, id="ms"),
        pytest.param("2s", 2.0, id="s"),
        pytest.param("5m", 300.0, id="m"),
        pytest.param("1h", 3600.0, id="h"),
        pytest.param("30d", 2_592_000.0, id="d"),
        pytest.param("1.5h", 5400.0, id="fractional"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param("3", 3.0, id="bare-int"),
        pytest.param("0.25", 0.25, id="bare-float"),
        pytest.param("'10'", 10.0, id="bare-number-as-string"),
    ],
)
def test_durations(written: str, seconds: float) -> None:
    config = parse_config(PRICING + f"rollup: {{retry_window: {written}}}\n")
    assert config.rollup.retry_window == seconds


@pytest.mark.parametrize(
    "written",
    [
        pytest.param("5 minutes", id="word-unit"),
        pytest.param("1w", id="weeks"),
        pytest.param("-1s", id="negative-string"),
        pytest.param("-1", id="negative-number"),
        pytest.param(".inf", id="infinite"),
        pytest.param("soon", id="text"),
        pytest.param("true", id="boolean"),
        pytest.param("[1s]", id="list"),
    ],
)
def test_bad_durations_are_named(written: str) -> None:
    (problem,) = problems(PRICING + f"rollup: {{retry_window: {written}}}\n")
    assert problem.startswith("rollup.retry_window: ")


# -- price table order ------------------------------------------------------------------

TABLES = {
    "a": "{version: a, effective_from: 2025-12-31T23:00:00-01:00, %s}",
    "b": "{version: b, effective_from: 2026-02-01, %s}",
    "c": "{version: c, effective_from: '2026-03-01T12:00:00.5Z', %s}",
}
STARTS = {
    "a": datetime(2026, 1, 1, tzinfo=UTC),
    "b": datetime(2026, 2, 1, tzinfo=UTC),
    "c": datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC),
}
PRICES = "cpu_core_hour: 1, memory_gb_hour: 0, gpu_hour: 0, egress_per_gb: {internet: 0}"


@pytest.mark.parametrize("order", ["abc", "cba", "bca", "cab"])
def test_tables_are_sorted_by_effective_from(order: str) -> None:
    items = "".join(f"    - {TABLES[v] % PRICES}\n" for v in order)
    config = parse_config(f"pricing:\n  tables:\n{items}")
    assert [t.version for t in config.pricing.tables] == ["a", "b", "c"]
    assert [t.effective_from_ns for t in config.pricing.tables] == [
        int(STARTS[v].timestamp()) * 10**9 + STARTS[v].microsecond * 1000 for v in "abc"
    ]


# -- match ------------------------------------------------------------------------------

MATCHES = table(
    """      metered:
        - name: stripe
          match:
            server.address: api.stripe.com
            http.request.method: {regex: 'POST|PUT'}
            costproc.spot: true
            feature.enabled: false
            retry.count: 2
          unit_price: 0.3
""",
    cpu_core_hour=1,
    memory_gb_hour=0,
    gpu_hour=0,
)


@pytest.fixture(scope="module")
def rule_matches() -> dict[str, Match]:
    (parsed,) = parse_config(MATCHES).pricing.tables
    return {m.key: m for m in parsed.metered[0].match}


@pytest.mark.parametrize(
    ("key", "value", "matches"),
    [
        pytest.param("server.address", "api.stripe.com", True, id="equal"),
        pytest.param("server.address", "api.stripe.com.evil", False, id="not-equal"),
        pytest.param("server.address", None, False, id="absent"),
        pytest.param("http.request.method", "PUT", True, id="regex"),
        pytest.param("http.request.method", "PUTS", False, id="regex-is-a-full-match"),
        pytest.param("http.request.method", "xPOST", False, id="regex-is-anchored-at-start"),
        pytest.param("costproc.spot", "true", True, id="yaml-true-is-text"),
        pytest.param("costproc.spot", "True", False, id="yaml-true-is-lowercase"),
        pytest.param("feature.enabled", "false", True, id="yaml-false-is-text"),
        pytest.param("retry.count", "2", True, id="yaml-int-is-text"),
        pytest.param("retry.count", "2.0", False, id="yaml-int-is-not-a-float"),
    ],
)
def test_match(rule_matches: dict[str, Match], key: str, value: str | None, matches: bool) -> None:
    assert rule_matches[key].test(value) is matches


@pytest.mark.parametrize("component", ["cpu", "memory", "gpu", "egress", "total"])
def test_metered_component_names_reserved_for_usage_and_total(component: str) -> None:
    text = f"""
pricing:
  tables:
    - version: a
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_second: 0
      memory_gb_second: 0
      gpu_second: 0
      egress_per_gb: {{internet: 0}}
      metered:
        - {{name: x, component: {component}, match: {{a: b}}, unit_price: 1}}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "pricing.tables[0].metered[0].component"
    ]


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("0.5", None),
        ("1", None),
        ("0", "rollup.backpressure_watermark"),
        ("1.5", "rollup.backpressure_watermark"),
    ],
    ids=["half", "one", "zero", "above-one"],
)
def test_backpressure_watermark(written: str, problem: str | None) -> None:
    text = PRICING + f"rollup: {{backpressure_watermark: {written}}}\n"
    if problem is None:
        assert parse_config(text).rollup.backpressure_watermark == float(written)
    else:
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert [p.split(":")[0] for p in err.value.problems] == [problem]
