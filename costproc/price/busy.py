"""Interval arithmetic for busy time: cut, merge, and split a union among its owners.

Times are integer nanoseconds; intervals are half-open (start, end) pairs.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from itertools import pairwise
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
Interval = tuple[int, int]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping intervals covering the same instants; empty ones dropped."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def subtract(start: int, end: int, cuts: Iterable[Interval]) -> list[Interval]:
    """The parts of [start, end) not covered by any of `cuts`."""
    out: list[Interval] = []
    cursor = start
    for cut_start, cut_end in merge(cuts):
        if cut_end <= cursor:
            continue
        if cut_start >= end:
            break
        if cut_start > cursor:
            out.append((cursor, cut_start))
        cursor = max(cursor, cut_end)
    if cursor < end:
        out.append((cursor, end))
    return out


def length(intervals: Iterable[Interval]) -> int:
    """Total length of the union of `intervals`."""
    return sum(end - start for start, end in merge(intervals))


def split_union(pieces: list[tuple[int, int, K]]) -> dict[K, int]:
    """Length of the union of `pieces`, split among their keys.

    Where pieces overlap, the instant goes to the piece that started last (the
    innermost span), so the union is counted once whatever the nesting.
    """
    keys = {key for _, _, key in pieces}
    if len(keys) <= 1:
        return {key: length((s, e) for s, e, _ in pieces) for key in keys}
    out: dict[K, int] = {}
    ordered = sorted((p for p in pieces if p[1] > p[0]), key=lambda p: p[0])
    bounds = sorted({t for s, e, _ in ordered for t in (s, e)})
    active: list[tuple[int, int, int]] = []  # (-start, end, index) of covering pieces
    nxt = 0
    for lo, hi in pairwise(bounds):
        while nxt < len(ordered) and ordered[nxt][0] <= lo:
            heapq.heappush(active, (-ordered[nxt][0], ordered[nxt][1], nxt))
            nxt += 1
        owner = _latest_covering(active, lo)
        if owner is not None:
            key = ordered[owner][2]
            out[key] = out.get(key, 0) + hi - lo
    return out


def _latest_covering(active: list[tuple[int, int, int]], at: int) -> int | None:
    # The heap top may have ended; drop ended entries lazily until one covers `at`.
    while active:
        _, end, index = active[0]
        if end > at:
            return index
        heapq.heappop(active)
    return None
