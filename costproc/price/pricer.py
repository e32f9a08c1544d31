"""Price an attempt: measured usage, busy-time estimates, egress and metered calls.

    spans of one attempt + their trace -> carve descendants -> union per instance -> Cost

Busy time of a job on an instance, per usage kind, is the union of its spans' *own*
instants there: an instant is not the span's own when a descendant on the same
instance covering it belongs to another job or is measured for that kind. Nested
spans of one job are therefore counted once, a batch consumer is not billed for its
message jobs, and a measured child is not estimated again inside its parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from costproc.model import NOT_MEASURED, RESOURCE_KINDS, Cost, SpanRecord
from costproc.price import busy
from costproc.price.book import PriceBook

NS = 1e9
_MAX_DEPTH = 10_000  # walks up parent chains stop here, so a parent cycle cannot hang us
_USAGE_FIELDS = ("cpu_seconds", "memory_gb_seconds", "gpu_seconds")

# Covered time per instance: merged intervals of an attempt's spans, kept after it
# closes so a late span's estimate never re-bills instants already billed.
Covered = dict[str, list[busy.Interval]]


class Pricer:
    """Turns spans into `Cost` with a `PriceBook`. Pure: no state between calls."""

    def __init__(self, book: PriceBook):
        self.book = book

    def price_attempt(
        self,
        job: str,
        spans: list[SpanRecord],
        trace: Mapping[bytes, SpanRecord],
        carve: bool = True,
    ) -> tuple[Cost, Covered]:
        """Cost of one attempt's spans, and the instants it covered per instance.

        `carve=False` promises that the trace holds no other job and no measured span,
        so no descendant can take instants away (the common case, and the cheap one).
        """
        cost = Cost()
        by_instance: dict[str, list[SpanRecord]] = {}
        for span in spans:
            if span.egress_bytes or span.metered or span.measured != NOT_MEASURED:
                self._price_local(span, cost)
            by_instance.setdefault(span.resource.instance, []).append(span)
        cuts = _carve(job, spans, trace) if carve else {}
        covered: Covered = {}
        for instance, group in by_instance.items():
            union = busy.merge((s.start, s.end) for s in group)
            covered[instance] = union
            if self._uniform(group, cuts):
                # Common case: one rate, nothing measured or cut out: one union serves all kinds.
                rates = self.book.rates(group[0].resource, group[0].table)
                seconds = sum(end - start for start, end in union) / NS
                for kind, share in enumerate(rates.usage):
                    if share > 0:
                        usage = seconds * share
                        _add_usage(cost, kind, usage, usage * rates.price[kind])
            else:
                for kind in range(len(RESOURCE_KINDS)):
                    self._add_busy(cost, kind, busy.split_union(self._pieces(group, kind, cuts)))
        return cost, covered

    def _uniform(self, group: list[SpanRecord], cuts: Mapping[bytes, object]) -> bool:
        first = group[0]
        rates = self.book.rates(first.resource, first.table)
        for span in group:
            if span.measured != NOT_MEASURED or span.span_id in cuts:
                return False
            if span.resource is not first.resource or span.table != first.table:
                other = self.book.rates(span.resource, span.table)
                if other.usage != rates.usage or other.price != rates.price:
                    return False
        return True

    def _pieces(
        self,
        group: list[SpanRecord],
        kind: int,
        cuts: Mapping[bytes, tuple[list[busy.Interval], ...]],
    ) -> list[tuple[int, int, tuple[float, float]]]:
        """Each span's own intervals for one usage kind, keyed by its (share, price)."""
        pieces: list[tuple[int, int, tuple[float, float]]] = []
        for span in group:
            if span.measured[kind] is not None:
                continue
            rates = self.book.rates(span.resource, span.table)
            share = rates.usage[kind]
            if share <= 0:
                continue
            key = (share, rates.price[kind])
            if span.span_id in cuts:
                own = busy.subtract(span.start, span.end, cuts[span.span_id][kind])
                pieces.extend((start, end, key) for start, end in own)
            else:
                pieces.append((span.start, span.end, key))
        return pieces

    def price_late(self, span: SpanRecord, covered: Covered) -> Cost:
        """Cost of a span whose attempt already closed; `covered` is updated in place."""
        cost = Cost()
        self._price_local(span, cost)
        instance = span.resource.instance
        already = covered.get(instance, [])
        own = busy.subtract(span.start, span.end, already)
        rates = self.book.rates(span.resource, span.table)
        for kind in range(len(RESOURCE_KINDS)):
            share = rates.usage[kind]
            if span.measured[kind] is None and share > 0 and own:
                self._add_busy(cost, kind, {(share, rates.price[kind]): busy.length(own)})
        covered[instance] = busy.merge([*already, (span.start, span.end)])
        return cost

    def _price_local(self, span: SpanRecord, cost: Cost) -> None:
        """What a span costs on its own: measured usage, egress, metered calls."""
        components = cost.by_component
        if span.measured != NOT_MEASURED:
            rates = self.book.rates(span.resource, span.table)
            for kind, value in enumerate(span.measured):
                if value is not None:
                    _add_usage(cost, kind, value, value * rates.price[kind])
        if span.egress_bytes:
            cls, usd = self.book.egress(span.table, span.egress_class, span.egress_bytes)
            cost.egress_by_class[cls] = cost.egress_by_class.get(cls, 0.0) + span.egress_bytes
            components["egress"] = components.get("egress", 0.0) + usd
        for component, usd in span.metered:
            components[component] = components.get(component, 0.0) + usd

    @staticmethod
    def _add_busy(
        cost: Cost, kind: int, seconds_by_rate: Mapping[tuple[float, float], int]
    ) -> None:
        for (share, price), ns in seconds_by_rate.items():
            usage = ns / NS * share
            _add_usage(cost, kind, usage, usage * price)


def _add_usage(cost: Cost, kind: int, usage: float, usd: float) -> None:
    field = _USAGE_FIELDS[kind]
    setattr(cost, field, getattr(cost, field) + usage)
    name = RESOURCE_KINDS[kind]
    cost.by_component[name] = cost.by_component.get(name, 0.0) + usd


def _carve(
    job: str, spans: Iterable[SpanRecord], trace: Mapping[bytes, SpanRecord]
) -> dict[bytes, tuple[list[busy.Interval], ...]]:
    """Per span of `job`: the intervals of descendants on its instance that are not its own.

    A descendant of another job is cut out for every kind; a descendant of the same job
    only for the kinds it measures.
    """
    instances = {s.resource.instance for s in spans}
    cuts: dict[bytes, tuple[list[busy.Interval], ...]] = {}
    for d in trace.values():
        if d.job is None or d.resource.instance not in instances:
            continue
        if d.job != job:
            kinds: tuple[int, ...] = (0, 1, 2)
        else:
            kinds = tuple(k for k, m in enumerate(d.measured) if m is not None)
            if not kinds:
                continue
        instance = d.resource.instance
        ancestor = trace.get(d.parent_id)
        for _ in range(_MAX_DEPTH):
            if ancestor is None:
                break
            if ancestor.job == job and ancestor.resource.instance == instance:
                entry = cuts.setdefault(ancestor.span_id, ([], [], []))
                for k in kinds:
                    entry[k].append((d.start, d.end))
            ancestor = trace.get(ancestor.parent_id)
    return cuts
