"""The price book: versioned price tables, chosen by a span's end time.

A span is priced by the table in force when it ended, so a price change never rewrites
history. Resource prices per table are resolved once per (resource, table) and cached
on the resource; metered rules are matched at decode time, while the attributes are at
hand, and leave only (component, cost) pairs on the record.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from costproc.config.model import Match, MeteredRule, PriceTable, PricingConfig, ResourcePrices
from costproc.model import Rates, Resource

GB = 1e9  # egress is priced per GB of 10^9 bytes, as cloud providers bill it

Lookup = Callable[[str], str | None]
NumberLookup = Callable[[str], float | None]


class InvalidQuantity(ValueError):
    """A metered rule's quantity attribute is not a finite, non-negative number."""


def matches_all(conditions: tuple[Match, ...], lookup: Lookup) -> bool:
    """True when every condition holds for the attributes behind `lookup`."""
    return all(c.test(lookup(c.key)) for c in conditions)


class PriceBook:
    """Price tables sorted by `effective_from`, with lookups for every pricing question."""

    def __init__(self, pricing: PricingConfig, default_egress_class: str):
        if not pricing.tables:
            raise ValueError("a price book needs at least one table")
        self.currency = pricing.currency
        self.tables = pricing.tables
        self.default_egress_class = default_egress_class
        self._starts = [t.effective_from_ns for t in pricing.tables]
        self._by_version = {t.version: t for t in pricing.tables}

    def table_at(self, time_ns: int) -> PriceTable:
        """The table in force at `time_ns`; before the first table, the first one."""
        if time_ns >= self._starts[-1]:  # nearly every span: the newest table
            return self.tables[-1]
        i = bisect.bisect_right(self._starts, time_ns) - 1
        return self.tables[max(i, 0)]

    def table(self, version: str) -> PriceTable:
        return self._by_version[version]

    def override_keys(self) -> frozenset[str]:
        """Resource attribute keys that some override looks at (kept at decode time)."""
        return frozenset(m.key for t in self.tables for o in t.overrides for m in o.match)

    def rates(self, resource: Resource, version: str) -> Rates:
        """Per-second usage share and unit prices for spans of `resource` under a table."""
        rates = resource.rates_by_table.get(version)
        if rates is None:
            rates = self._resolve_rates(resource, self._by_version[version])
            resource.rates_by_table[version] = rates
        return rates

    def _resolve_rates(self, resource: Resource, table: PriceTable) -> Rates:
        base = table.prices
        cpu = base.cpu_core_second or 0.0
        mem = base.memory_gb_second or 0.0
        gpu = base.gpu_second or 0.0
        attrs = resource.override_attrs
        for override in table.overrides:
            if not matches_all(override.match, attrs.get):
                continue
            p: ResourcePrices = override.prices
            cpu = (
                p.cpu_core_second if p.cpu_core_second is not None else cpu
            ) * override.multiplier
            mem = (
                p.memory_gb_second if p.memory_gb_second is not None else mem
            ) * override.multiplier
            gpu = (p.gpu_second if p.gpu_second is not None else gpu) * override.multiplier
        share = tuple(a / resource.concurrency for a in resource.allocation)
        return Rates((share[0], share[1], share[2]), (cpu, mem, gpu))

    def egress(self, version: str, egress_class: str, nbytes: float) -> tuple[str, float]:
        """(class billed, cost): a class the table does not know is billed as the default."""
        prices = self._by_version[version].egress_per_gb
        if egress_class not in prices:
            egress_class = self.default_egress_class
        return egress_class, nbytes / GB * prices.get(egress_class, 0.0)

    @staticmethod
    def metered(
        table: PriceTable, lookup: Lookup, number: NumberLookup
    ) -> tuple[tuple[str, float], ...]:
        """(component, cost) for every metered rule of `table` that matches a span."""
        out: list[tuple[str, float]] = []
        for rule in table.metered:
            if matches_all(rule.match, lookup):
                quantity = _quantity(rule, number)
                if quantity:
                    out.append((rule.component, quantity * rule.unit_price))
        return tuple(out)


def _quantity(rule: MeteredRule, number: NumberLookup) -> float:
    if rule.quantity_attribute is None:
        return 1.0
    value = number(rule.quantity_attribute)
    if value is None:
        return 0.0
    if not math.isfinite(value) or value < 0:
        raise InvalidQuantity(rule.quantity_attribute)
    return value
