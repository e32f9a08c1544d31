"""Golden end-to-end rollups: OTLP bytes in, Prometheus exposition out, on a fake clock.

Each `testdata/golden/*.json` case overlays `testdata/golden/config.yaml` and lists steps.
A step advances the clock and lets the rollup tick, then sends one request of spans (in
the `otlp.S` shorthand), then checks exposition lines. Expected lines are written by
hand from the SPEC: series name and labels must match exactly, values as numbers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import merge
from otlp import S, body
from prometheus_client import CollectorRegistry, generate_latest

from costproc.clock import FakeClock
from costproc.config.load import parse_config
from costproc.export.metrics import CostMetrics
from costproc.price.book import PriceBook
from costproc.price.pricer import Pricer
from costproc.receive.decode import Decoder
from costproc.rollup.rollup import Rollup

GOLDEN = Path(__file__).parent / "testdata" / "golden"
CASES = sorted(GOLDEN.glob("*.json"))

_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?(?: (?P<value>\S+))?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = tuple[str, tuple[tuple[str, str], ...]]


def parse_line(line: str) -> tuple[Series, float | None]:
    """`name{labels} value` -> ((name, sorted labels), value); value None when left out."""
    m = _LINE.match(line.strip())
    assert m is not None, f"not an exposition line: {line!r}"
    labels = tuple(sorted(_LABEL.findall(m["labels"] or "")))
    value = float(m["value"]) if m["value"] is not None else None
    return (m["name"], labels), value


def exposition(registry: CollectorRegistry) -> dict[Series, float]:
    """Every sample of a text-format scrape, by series."""
    out: dict[Series, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            series, value = parse_line(line)
            assert value is not None
            out[series] = value
    return out


class Pipeline:
    """The service's stages wired as in `Service`, without servers, on a fake clock."""

    def __init__(self, overlay: dict[str, Any]) -> None:
        base = yaml.safe_load((GOLDEN / "config.yaml").read_text(encoding="utf-8"))
        config = parse_config(yaml.safe_dump(merge(base, overlay)))
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        book = PriceBook(config.pricing, config.usage.egress_default_class)
        self.metrics = CostMetrics(config.prometheus, config.pricing.currency, self.registry)
        self.decoder = Decoder(config, book)
        self.rollup = Rollup(config.rollup, Pricer(book), self.metrics, self.clock)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.rollup.tick()

    def send(self, spans: list[S]) -> None:
        decoded = self.decoder.decode(body(spans))
        assert not decoded.rejected, decoded.rejection_message()
        self.metrics.spans_received(decoded.received)
        self.metrics.spans_dropped("duplicate", self.rollup.add(decoded.spans))

    def check(self, expected: list[str], absent: list[str], where: str) -> None:
        actual = exposition(self.registry)
        for line in expected:
            series, want = parse_line(line)
            assert series in actual, f"{where}: missing {line}"
            assert want is not None, f"{where}: no value in {line}"
            assert math.isclose(actual[series], want, rel_tol=1e-9, abs_tol=1e-15), (
                f"{where}: {line} but got {actual[series]}"
            )
        for line in absent:
            series, _ = parse_line(line)
            assert series not in actual, f"{where}: unexpected {line} = {actual.get(series)}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    pipeline = Pipeline(case.get("config", {}))
    for i, step in enumerate(case["steps"]):
        if "advance" in step:
            pipeline.advance(step["advance"])
        if "spans" in step:
            pipeline.send([S(**span) for span in step["spans"]])
        where = f"step {i} (t={pipeline.clock.now()})"
        pipeline.check(step.get("expected", []), step.get("absent", []), where)
    pipeline.check(case["expected"], case.get("absent", []), "end")


def test_cases_are_present() -> None:
    assert len(CASES) >= 8
    for path in CASES:
        case = json.loads(path.read_text(encoding="utf-8"))
        assert case["description"] and case["expected"], path.name
