"""Pricing (SPEC sections 3 and 4): busy time, tables, overrides, metered rules, egress."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from otlp import BASE_NS, S, body
from rollup_kit import T0, TABLE, resource, span

from costproc.config.load import parse_config
from costproc.config.model import (
    Match,
    MeteredRule,
    Override,
    PriceTable,
    PricingConfig,
    ResourcePrices,
)
from costproc.model import Resource
from costproc.price import busy
from costproc.price.book import PriceBook
from costproc.price.pricer import Pricer
from costproc.receive.decode import Decoder

# -- interval arithmetic -------------------------------------------------------


@pytest.mark.parametrize(
    ("intervals", "merged"),
    [
        ([], []),
        ([(0, 10), (5, 20)], [(0, 20)]),
        ([(10, 20), (0, 5)], [(0, 5), (10, 20)]),
        ([(0, 10), (10, 20)], [(0, 20)]),
        ([(0, 100), (10, 20), (30, 40)], [(0, 100)]),
        ([(5, 5), (7, 3)], []),
    ],
    ids=["empty", "overlap", "unsorted-gap", "touching", "nested", "degenerate"],
)
def test_merge(intervals: list[tuple[int, int]], merged: list[tuple[int, int]]) -> None:
    assert busy.merge(intervals) == merged


@pytest.mark.parametrize(
    ("cuts", "left"),
    [
        ([], [(0, 100)]),
        ([(20, 30)], [(0, 20), (30, 100)]),
        ([(-10, 10), (90, 200)], [(10, 90)]),
        ([(0, 100)], []),
        ([(20, 40), (30, 50)], [(0, 20), (50, 100)]),
    ],
    ids=["none", "middle", "edges", "all", "overlapping-cuts"],
)
def test_subtract(cuts: list[tuple[int, int]], left: list[tuple[int, int]]) -> None:
    assert busy.subtract(0, 100, cuts) == left


def test_split_union_gives_overlaps_to_the_innermost_piece() -> None:
    parent, child = "parent", "child"
    assert busy.split_union([(0, 100, parent), (20, 40, child)]) == {parent: 80, child: 20}
    assert busy.split_union([(0, 100, parent), (0, 100, parent)]) == {parent: 100}
    assert busy.split_union([(0, 50, parent), (40, 80, child), (90, 95, parent)]) == {
        parent: 45,
        child: 40,
    }


# -- busy time -----------------------------------------------------------------


def _price(spans: list, job: str = "j") -> tuple[float, float, float]:  # type: ignore[type-arg]
    book = PriceBook(PricingConfig(tables=(TABLE,)), "internet")
    for s in spans:
        s.job = s.job_id or job
    mine = [s for s in spans if s.job == job]
    cost, _ = Pricer(book).price_attempt(job, mine, {s.span_id: s for s in spans})
    return cost.cpu_seconds, cost.memory_gb_seconds, cost.gpu_seconds


@pytest.mark.parametrize(
    ("spans", "cpu"),
    [
        ([span(1, 1, None, 0, 100)], 0.1),
        ([span(1, 1, None, 0, 100), span(1, 2, 1, 10, 50), span(1, 3, 2, 20, 30)], 0.1),
        ([span(1, 1, None, 0, 100), span(1, 2, 1, 80, 150)], 0.15),  # a child outliving its parent
        ([span(1, 1, None, 0, 100), span(1, 2, 1, 20, 50, job="other")], 0.07),
        ([span(1, 1, None, 0, 100), span(1, 2, 1, 20, 50, measured=(0.5, None, None))], 0.57),
        (
            [span(1, 1, None, 0, 100), span(1, 2, 1, 20, 50, res=resource("elsewhere", cpu=2.0))],
            0.16,  # another instance's time is its own: 0.1 here + 0.03 s x 2 cores there
        ),
        (
            # another job's span elsewhere does not cut this instance's time
            [span(1, 1, None, 0, 100), span(1, 2, 1, 20, 50, job="o", res=resource("elsewhere"))],
            0.1,
        ),
        (
            # an other-job grandchild cuts through a same-job child on the same instance
            [span(1, 1, None, 0, 100), span(1, 2, 1, 10, 90), span(1, 3, 2, 20, 60, job="o")],
            0.06,
        ),
    ],
    ids=[
        "single",
        "nested-once",
        "child-outlives-parent",
        "other-job-child-cut",
        "measured-child-not-estimated-again",
        "per-instance",
        "other-instance-no-cut",
        "deep-cut",
    ],
)
def test_busy_time_union(spans: list, cpu: float) -> None:  # type: ignore[type-arg]
    assert _price(spans)[0] == pytest.approx(cpu)


def test_measured_kind_cuts_only_that_kind() -> None:
    res = resource(cpu=1.0, memory=2.0)
    spans = [
        span(1, 1, None, 0, 100, res=res),
        span(1, 2, 1, 20, 50, res=res, measured=(0.5, None, None)),
    ]
    cpu, memory, gpu = _price(spans)
    assert cpu == pytest.approx(0.07 + 0.5)
    assert memory == pytest.approx(0.1 * 2.0)  # memory still estimated over the whole root
    assert gpu == 0.0


def test_concurrency_shares_the_instance() -> None:
    res = resource(cpu=4.0, memory=8.0, gpu=1.0, concurrency=4.0)
    assert _price([span(1, 1, None, 0, 1000, res=res)]) == pytest.approx((1.0, 2.0, 0.25))


# -- tables, overrides, units --------------------------------------------------


def _table(version: str, start_ns: int, cpu: float, **kw: object) -> PriceTable:
    prices = ResourcePrices(cpu_core_second=cpu, memory_gb_second=0.0, gpu_second=0.0)
    return PriceTable(version, start_ns, prices, {"internet": 0.0}, **kw)  # type: ignore[arg-type]


def test_table_chosen_by_span_end_time() -> None:
    switch = T0 + 50 * 1_000_000
    book = PriceBook(
        PricingConfig(tables=(_table("old", 0, 1.0), _table("new", switch, 3.0))), "internet"
    )
    assert book.table_at(switch - 1).version == "old"
    assert book.table_at(switch).version == "new"
    assert book.table_at(-5).version == "old"  # before every table: the first one
    spans = [
        span(1, 1, None, 0, 40, table="old"),  # ended before the switch
        span(1, 2, None, 60, 100, table="new"),
    ]
    for s in spans:
        s.job = "j"
    cost, _ = Pricer(book).price_attempt("j", spans, {s.span_id: s for s in spans})
    assert cost.by_component["cpu"] == pytest.approx(0.04 * 1.0 + 0.04 * 3.0)


@pytest.mark.parametrize(
    ("attrs", "cpu_price"),
    [
        ({}, 1.0),
        ({"cloud.region": "eu-west-1"}, 2.0),
        ({"capacity": "spot"}, 0.3),
        ({"cloud.region": "eu-west-1", "capacity": "spot"}, 0.6),  # later overrides compound
        ({"host.type": "m7i.large"}, 5.0),
    ],
    ids=["base", "region-absolute", "spot-multiplier", "region-and-spot", "regex-instance-type"],
)
def test_overrides_by_resource_attributes(attrs: dict[str, str], cpu_price: float) -> None:
    table = _table(
        "v",
        0,
        1.0,
        overrides=(
            Override(
                (Match("cloud.region", equals="eu-west-1"),), ResourcePrices(cpu_core_second=2.0)
            ),
            Override((Match("capacity", equals="spot"),), ResourcePrices(), multiplier=0.3),
            Override((Match("host.type", regex=re.compile(r"m7i\..*")),), ResourcePrices(5.0)),
        ),
    )
    book = PriceBook(PricingConfig(tables=(table,)), "internet")
    res = Resource("svc", "svc", (1.0, 0.0, 0.0), 1.0, override_attrs=attrs)
    assert book.rates(res, "v").price[0] == pytest.approx(cpu_price)
    assert book.override_keys() == {"cloud.region", "capacity", "host.type"}


def test_hourly_prices_are_converted() -> None:
    config = parse_config(
        """
pricing:
  tables:
    - version: a
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_hour: 3.6
      memory_gb_hour: 0.36
      gpu_second: 2
      egress_per_gb: {internet: 0.09}
"""
    )
    prices = config.pricing.tables[0].prices
    assert prices.cpu_core_second == pytest.approx(0.001)
    assert prices.memory_gb_second == pytest.approx(0.0001)
    assert prices.gpu_second == 2.0


# -- decode-time usage: metered rules and egress ----------------------------------

_CONFIG = """
usage:
  egress:
    default_class: internet
    rules:
      - match: {server.address: {regex: '.*\\.internal'}}
        class: intra_region
      - match: {peer.service: billing}
        class: inter_region
pricing:
  tables:
    - version: a
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_second: 0
      memory_gb_second: 0
      gpu_second: 0
      egress_per_gb: {internet: 0.09, intra_region: 0.01, inter_region: 0.02}
      metered:
        - name: stripe
          component: third_party_api
          match: {server.address: api.stripe.com}
          unit_price: 0.002
        - name: gpt4o-in
          component: llm_tokens
          match: {gen_ai.request.model: {regex: 'gpt-4o(-.*)?'}}
          quantity: gen_ai.usage.input_tokens
          unit_price: 0.0000025
        - name: dynamo
          component: storage_ops
          match: {db.system: dynamodb, db.operation.name: PutItem}
          unit_price: 0.000000625
"""


def _decode(attrs: dict[str, object], kind: str = "client") -> tuple[object, ...]:
    config = parse_config(_CONFIG)
    decoder = Decoder(config, PriceBook(config.pricing, config.usage.egress_default_class))
    decoded = decoder.decode(body([S(1, 1, None, 0, 10, attrs, kind=kind)]))
    if decoded.rejected:
        return ("rejected", *decoded.rejected)
    record = decoded.spans[0]
    return record.metered, record.egress_bytes, record.egress_class


@pytest.mark.parametrize(
    ("attrs", "metered"),
    [
        ({"server.address": "api.stripe.com"}, (("third_party_api", 0.002),)),
        ({"server.address": "api.stripe.com.evil"}, ()),
        (
            {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 2000},
            (("llm_tokens", 0.005),),
        ),
        (
            {"gen_ai.request.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 2000.0},
            (("llm_tokens", 0.005),),
        ),
        ({"gen_ai.request.model": "gpt-4o"}, ()),  # no quantity on the span: nothing to price
        ({"gen_ai.request.model": "o1", "gen_ai.usage.input_tokens": 5}, ()),
        (
            {"db.system": "dynamodb", "db.operation.name": "PutItem"},
            (("storage_ops", 0.000000625),),
        ),
        ({"db.system": "dynamodb", "db.operation.name": "GetItem"}, ()),
    ],
    ids=[
        "per-call",
        "no-match",
        "tokens-int",
        "tokens-double-regex",
        "no-quantity",
        "other-model",
        "all-match",
        "partial-match",
    ],
)
def test_metered_rules(attrs: dict[str, object], metered: tuple[tuple[str, float], ...]) -> None:
    got = _decode(attrs)[0]
    assert [c for c, _ in got] == [c for c, _ in metered]  # type: ignore[attr-defined]
    assert [u for _, u in got] == pytest.approx([u for _, u in metered])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "attrs",
    [
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": -1},
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": float("nan")},
        {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": "1000"},
    ],
    ids=["negative", "nan", "string"],
)
def test_invalid_metered_quantity_rejects_span(attrs: dict[str, object]) -> None:
    assert _decode(attrs) == ("rejected", "invalid_usage")


@pytest.mark.parametrize(
    ("attrs", "kind", "egress"),
    [
        ({"costproc.egress.bytes": 1000}, "internal", (1000.0, "internet")),
        (
            {"costproc.egress.bytes": 1000, "costproc.egress.class": "intra_region"},
            "internal",
            (1000.0, "intra_region"),
        ),
        (
            {"costproc.egress.bytes": 10, "http.response.body.size": 99},
            "server",
            (10.0, "internet"),
        ),
        ({"http.response.body.size": 99}, "server", (99.0, "internet")),
        ({"http.request.body.size": 99}, "client", (99.0, "internet")),
        ({"http.request.body.size": 99}, "server", (0.0, "")),  # a request size on a SERVER span
        ({"http.request.body.size": -5}, "server", (0.0, "")),  # ...is ignored, not validated
        ({"messaging.message.body.size": 7}, "producer", (7.0, "internet")),
        (
            {"http.request.body.size": 50, "server.address": "db.internal"},
            "client",
            (50.0, "intra_region"),
        ),
        (
            {"http.request.body.size": 50, "peer.service": "billing"},
            "client",
            (50.0, "inter_region"),
        ),
    ],
    ids=[
        "explicit",
        "explicit-class",
        "explicit-wins",
        "server-response",
        "client-request",
        "server-request-ignored",
        "uncounted-not-validated",
        "producer",
        "rule-regex",
        "rule-peer",
    ],
)
def test_egress_source_and_class(
    attrs: dict[str, object], kind: str, egress: tuple[float, str]
) -> None:
    assert _decode(attrs, kind)[1:] == egress


def test_unknown_egress_class_priced_as_default() -> None:
    book = PriceBook(PricingConfig(tables=(TABLE,)), "internet")
    assert book.egress("v1", "mars", 2e9) == ("internet", pytest.approx(2.0))
    assert book.egress("v1", "intra_region", 1e9) == ("intra_region", pytest.approx(0.1))


def test_attempt_egress_and_metered_add_up() -> None:
    book = PriceBook(PricingConfig(tables=(TABLE,)), "internet")
    res = resource(cpu=0.0)
    spans = [
        span(1, 1, None, 0, 100, res=res, egress_bytes=5e8, egress_class="internet"),
        span(
            1,
            2,
            1,
            0,
            10,
            res=res,
            egress_bytes=1e9,
            egress_class="intra_region",
            metered=(("api", 0.25),),
        ),
        span(1, 3, 1, 0, 10, res=res, metered=(("api", 0.25), ("llm", 1.0))),
    ]
    for s in spans:
        s.job = "j"
    cost, _ = Pricer(book).price_attempt("j", spans, {s.span_id: s for s in spans})
    assert cost.by_component == pytest.approx({"egress": 0.5 + 0.1, "api": 0.5, "llm": 1.0})
    assert cost.egress_by_class == {"internet": 5e8, "intra_region": 1e9}


def test_span_priced_by_table_at_its_end_through_decode() -> None:
    config = parse_config(
        _CONFIG.replace(
            "effective_from: 2026-01-01T00:00:00Z", "effective_from: 2026-01-01T00:00:00.050Z"
        )
        + """
    - version: b
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_second: 0
      memory_gb_second: 0
      gpu_second: 0
      egress_per_gb: {internet: 0.09}
"""
    )
    decoder = Decoder(config, PriceBook(config.pricing, "internet"))
    decoded = decoder.decode(body([S(1, 1, None, 0, 40), S(1, 2, None, 0, 60)]))
    assert [s.table for s in decoded.spans] == ["b", "a"]
    assert BASE_NS == T0


def test_table_switch_never_rewrites_measured_history() -> None:
    old, new = _table("old", 0, 1.0), _table("new", T0 + 10**9, 2.0)
    book = PriceBook(PricingConfig(tables=(old, new)), "internet")
    s = span(1, 1, None, 0, 100, measured=(3.0, None, None), table="old")
    s.job = "j"
    cost, _ = Pricer(book).price_attempt("j", [s], {s.span_id: s})
    assert cost.by_component["cpu"] == pytest.approx(3.0)


def test_metered_rule_config_roundtrip() -> None:
    config = parse_config(_CONFIG)
    rule = config.pricing.tables[0].metered[1]
    assert rule == replace(rule)
    assert isinstance(rule, MeteredRule) and rule.quantity_attribute == "gen_ai.usage.input_tokens"
