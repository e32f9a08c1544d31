"""The `pricing` section: dated price tables, metered rules and overrides."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from costproc.config.model import (
    MeteredRule,
    Override,
    PriceTable,
    PricingConfig,
    ResourcePrices,
)
from costproc.config.reader import Reader, join

_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Resource prices may be written per second or per hour; hourly ones are converted.
# Each key maps to (field, seconds per unit of the key).
_RESOURCE_PRICE_KEYS = {
    "cpu_core_second": ("cpu_core_second", 1),
    "cpu_core_hour": ("cpu_core_second", 3600),
    "memory_gb_second": ("memory_gb_second", 1),
    "memory_gb_hour": ("memory_gb_second", 3600),
    "gpu_second": ("gpu_second", 1),
    "gpu_hour": ("gpu_second", 3600),
}

_RESERVED_COMPONENTS = frozenset({"cpu", "memory", "gpu", "egress", "total"})


def read_pricing(r: Reader, node: Any, path: str) -> PricingConfig:
    """The `pricing` section, its tables sorted by `effective_from`."""
    sec = r.section(node, path, {"currency", "tables"})
    currency = r.get(sec, path, "currency", r.text, "USD")
    if currency and not _CURRENCY.match(currency):
        r.bad(join(path, "currency"), f"must be an ISO 4217 code like USD, got {currency!r}")
    tables_node = sec.get("tables")
    tables_path = join(path, "tables")
    if not isinstance(tables_node, list) or not tables_node:
        r.bad(tables_path, "must be a non-empty list of price tables")
        return PricingConfig(currency=currency)
    tables = [_table(r, t, join(tables_path, i)) for i, t in enumerate(tables_node)]
    r.unique([t.version for t in tables], tables_path, "version")
    r.unique([t.effective_from_ns for t in tables], tables_path, "effective_from")
    return PricingConfig(
        currency=currency, tables=tuple(sorted(tables, key=lambda t: t.effective_from_ns))
    )


def _table(r: Reader, node: Any, path: str) -> PriceTable:
    known = {
        "version",
        "effective_from",
        "egress_per_gb",
        "metered",
        "overrides",
        *_RESOURCE_PRICE_KEYS,
    }
    sec = r.section(node, path, known)
    egress_path = join(path, "egress_per_gb")
    egress_node = sec.get("egress_per_gb")
    egress: dict[str, float] = {}
    if not isinstance(egress_node, Mapping) or not egress_node:
        r.bad(egress_path, "must map each egress class to a price per GB (10^9 bytes)")
    else:
        for cls, price in egress_node.items():
            egress[str(cls)] = r.number(minimum=0)(price, join(egress_path, str(cls)))
    prices = _resource_prices(r, sec, path)
    for name in ("cpu_core_second", "memory_gb_second", "gpu_second"):
        if getattr(prices, name) is None:
            r.bad(join(path, name), "missing price (give it per second or per hour)")
    return PriceTable(
        version=r.text(sec.get("version"), join(path, "version")),
        effective_from_ns=r.timestamp(sec.get("effective_from"), join(path, "effective_from")),
        prices=prices,
        egress_per_gb=egress,
        metered=_metered(r, sec.get("metered"), join(path, "metered")),
        overrides=_overrides(r, sec.get("overrides"), join(path, "overrides")),
    )


def _resource_prices(r: Reader, sec: Mapping[str, Any], path: str) -> ResourcePrices:
    values: dict[str, float] = {}
    for key, (field_name, seconds) in _RESOURCE_PRICE_KEYS.items():
        if key not in sec:
            continue
        if field_name in values:
            r.bad(join(path, key), f"{field_name} given twice (per second and per hour)")
        price = r.number(minimum=0)(sec[key], join(path, key))
        values[field_name] = _per_second(price, seconds)
    return ResourcePrices(**values)


def _metered(r: Reader, node: Any, path: str) -> tuple[MeteredRule, ...]:
    rules = []
    for i, item in enumerate(r.items(node, path, "a list of rules")):
        sub = join(path, i)
        sec = r.section(item, sub, {"name", "component", "match", "quantity", "unit_price"})
        quantity = sec.get("quantity", 1)
        if isinstance(quantity, bool) or (quantity != 1 and not isinstance(quantity, str)):
            r.bad(
                join(sub, "quantity"),
                f"must be 1 (per span) or an attribute name, got {quantity!r}",
            )
        name = r.text(sec.get("name"), join(sub, "name"))
        component = r.get(sec, sub, "component", r.text, name)
        if component in _RESERVED_COMPONENTS:
            r.bad(
                join(sub, "component"),
                f"{component!r} is reserved (cpu, memory, gpu, egress are priced "
                "from usage; total is the sum)",
            )
        rules.append(
            MeteredRule(
                name=name,
                component=component,
                match=r.matches(sec.get("match"), join(sub, "match")),
                quantity_attribute=quantity if isinstance(quantity, str) else None,
                unit_price=r.number(minimum=0)(sec.get("unit_price"), join(sub, "unit_price")),
            )
        )
    r.unique([r.name for r in rules], path, "name")
    return tuple(rules)


def _overrides(r: Reader, node: Any, path: str) -> tuple[Override, ...]:
    out = []
    for i, item in enumerate(r.items(node, path, "a list of overrides")):
        sub = join(path, i)
        sec = r.section(item, sub, {"match", "multiplier", *_RESOURCE_PRICE_KEYS})
        prices = _resource_prices(r, sec, sub)
        multiplier = r.get(sec, sub, "multiplier", r.number(minimum=0), 1.0)
        if prices == ResourcePrices() and "multiplier" not in sec:
            r.bad(sub, "sets no price and no multiplier")
        out.append(Override(r.matches(sec.get("match"), join(sub, "match")), prices, multiplier))
    return tuple(out)


def _per_second(price: float, seconds: int) -> float:
    # Divide the decimal the operator wrote, not its binary approximation, so that
    # cpu_core_hour: 0.036 is exactly 0.00001 per second (0.036 / 3600 in floats is not).
    return float(Decimal(repr(price)) / seconds)
