"""A ledger of counter and histogram series: floats behind one lock, formatted at scrape.

sink call -> with lock: series.value += x / series.observe(x) -> scrape: with lock: copy
the floats -> release -> format the copy as CounterMetricFamily / HistogramMetricFamily

Series are keyed by their label values and made on first use. Callers hold `Ledger.lock`
while they make or update series; `collect()` holds it only while it copies them.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from functools import partial

from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

# An exemplar as the hot path keeps it: trace id, observed value, wall-clock time.
TraceExemplar = tuple[bytes, float, float]
# One histogram series copied under the lock: label values, bucket counts, sum,
# exemplars, creation time.
_HistogramRow = tuple[tuple[str, ...], list[float], float, list[TraceExemplar | None], float]
# A family's series copied under the lock; called with the `_created` switch, it formats.
Snapshot = Callable[[bool], Metric]


def _created_series() -> bool:
    """Whether prometheus_client writes `_created` series (see disable_created_metrics)."""
    # Its switch is a module global with no public getter; following it keeps the
    # exposition identical to what its own Counter and Histogram objects would write.
    return client_metrics._use_created


class CounterSeries:
    """One counter series: a float that only goes up."""

    __slots__ = ("created", "value")

    def __init__(self, value: float, created: float) -> None:
        self.value = value
        self.created = created


class HistogramSeries:
    """One histogram series: a count per bucket, the sum, the latest exemplar per bucket."""

    __slots__ = ("bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, bounds: list[float], created: float) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.exemplars: list[TraceExemplar | None] = [None] * len(bounds)
        self.created = created

    def observe(self, value: float) -> None:
        """Count a finite `value` in the first bucket whose bound is >= it; add it to the sum."""
        self.counts[bisect_left(self.bounds, value)] += 1.0
        self.sum += value

    def observe_traced(self, value: float, trace_id: bytes, now: float) -> None:
        """Observe `value` and make `trace_id` its bucket's exemplar; none when it is empty."""
        index = bisect_left(self.bounds, value)
        self.counts[index] += 1.0
        self.sum += value
        if trace_id:
            self.exemplars[index] = (trace_id, value, now)


class CounterFamily:
    """Counter series under one name, in the order they were made."""

    __slots__ = ("_doc", "_labelnames", "_name", "_series")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str]) -> None:
        self._name = name
        self._doc = doc
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], CounterSeries] = {}

    def series(self, values: tuple[str, ...]) -> CounterSeries:
        """The series under `values`, made at zero on first use; the caller holds the lock."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = CounterSeries(0.0, time.time())
        return series

    def snapshot(self) -> Snapshot:
        """The series as they stand, to be formatted after the lock is released."""
        rows = [(values, s.value, s.created) for values, s in self._series.items()]
        return partial(self._metric, rows)

    def describe(self) -> CounterMetricFamily:
        """The family without samples."""
        return CounterMetricFamily(self._name, self._doc, labels=self._labelnames)

    def _metric(self, rows: list[tuple[tuple[str, ...], float, float]], created: bool) -> Metric:
        """The family as prometheus_client's Counter would export it."""
        metric = self.describe()
        for values, value, made in rows:
            metric.add_metric(values, value, made if created else None)
        return metric


class HistogramFamily:
    """Histogram series under one name and one set of bucket bounds, +Inf last."""

    __slots__ = ("_bounds", "_doc", "_labelnames", "_les", "_name", "_series")

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._doc = doc
        self._labelnames = tuple(labelnames)
        self._bounds = _bounds(buckets)
        self._les = tuple(floatToGoString(b) for b in self._bounds)  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], HistogramSeries] = {}

    def series(self, values: tuple[str, ...]) -> HistogramSeries:
        """The series under `values`, made empty on first use; the caller holds the lock."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = HistogramSeries(self._bounds, time.time())
        return series

    def snapshot(self) -> Snapshot:
        """The series as they stand, to be formatted after the lock is released."""
        rows = [
            (values, s.counts.copy(), s.sum, s.exemplars.copy(), s.created)
            for values, s in self._series.items()
        ]
        return partial(self._metric, rows)

    def describe(self) -> HistogramMetricFamily:
        """The family without samples."""
        return HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def _metric(self, rows: list[_HistogramRow], created: bool) -> Metric:
        """The family as prometheus_client's Histogram would export it."""
        metric = self.describe()
        for row in rows:
            metric.samples.extend(self._samples(row, created))
        return metric

    def _samples(self, row: _HistogramRow, created: bool) -> Iterator[Sample]:
        # Built by hand because HistogramMetricFamily.add_metric takes no `_created` and
        # drops `_count` along with `_sum` when the first bound is negative; Histogram doesn't.
        values, counts, total_sum, exemplars, made = row
        name, labels = self._name, dict(zip(self._labelnames, values, strict=True))
        total = 0.0
        for le, count, exemplar in zip(self._les, counts, exemplars, strict=True):
            total += count
            bucket = {**labels, "le": le}
            yield Sample(f"{name}_bucket", bucket, total, None, _exemplar(exemplar))
        yield Sample(f"{name}_count", dict(labels), total)
        if self._bounds[0] >= 0:
            yield Sample(f"{name}_sum", dict(labels), total_sum)
        if created:
            yield Sample(f"{name}_created", dict(labels), made)


def _bounds(buckets: Sequence[float]) -> list[float]:
    """Bucket bounds as prometheus_client's Histogram takes them: sorted, +Inf appended."""
    bounds = [float(b) for b in buckets]
    if bounds != sorted(bounds):
        raise ValueError("Buckets not in sorted order")
    if bounds and bounds[-1] != math.inf:
        bounds.append(math.inf)
    if len(bounds) < 2:
        raise ValueError("Must have at least two buckets")
    return bounds


def _exemplar(kept: TraceExemplar | None) -> Exemplar | None:
    """The exemplar prometheus_client would have kept, its trace id formatted only now."""
    if kept is None:
        return None
    trace_id, value, at = kept
    return Exemplar({"trace_id": trace_id.hex()}, value, at)


class Ledger(Collector):
    """Counter and histogram families behind one lock, exported by `collect()`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._families: list[CounterFamily | HistogramFamily] = []

    def counter(self, name: str, doc: str, labelnames: Sequence[str]) -> CounterFamily:
        """Declare a counter family; declare every family before registering the ledger."""
        family = CounterFamily(name, doc, labelnames)
        self._families.append(family)
        return family

    def histogram(
        self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> HistogramFamily:
        """Declare a histogram family; declare every family before registering the ledger."""
        family = HistogramFamily(name, doc, labelnames, buckets)
        self._families.append(family)
        return family

    def describe(self) -> Iterator[Metric]:
        """Every family without samples, so the registry refuses clashing names."""
        for family in self._families:
            yield family.describe()

    def collect(self) -> Iterator[Metric]:
        """Every family from one consistent copy, formatted after the lock is released."""
        with self.lock:
            snapshots = [family.snapshot() for family in self._families]
        created = _created_series()
        for snapshot in snapshots:
            yield snapshot(created)
