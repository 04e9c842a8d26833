"""Vectorised evaluation core: batches of readings as numpy arrays in, window values and levels out.

Pure (numpy only, no I/O). Times are int64 milliseconds since the epoch (event time). The
obviously-correct loops in rules/reference.py compute the same things one reading at a time;
tests/unit/test_core.py checks they agree on random streams.

Clock: event time only. The watermark is the highest event time seen so far minus the allowed
lateness; a window [start, start + size) closes once the watermark reaches its end, and a reading
whose window has already closed when it arrives is too late: it is counted and reported
(``late_mask``), never silently folded into a closed window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rules.indicators import Aggregation, Direction, Indicator

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Bool = npt.NDArray[np.bool_]

MS_PER_HOUR = 3_600_000.0
MICRO = 1_000_000  # live sums are kept in integer micro-units (exact, order-independent)


@dataclass(frozen=True, slots=True)
class WindowValues:
    """One row per (scope, window) that saw readings, sorted by scope then window start."""

    scope: I64
    start: I64
    value: F64
    count: I64

    def __len__(self) -> int:
        return int(self.scope.shape[0])


def window_starts(ts: I64, window_ms: int) -> I64:
    """Start of the tumbling event-time window each timestamp falls in."""
    return (ts // window_ms) * window_ms


def late_mask(ts: I64, window_ms: int, lateness_ms: int, watermark: int | None = None) -> Bool:
    """Readings (in arrival order) whose window had closed before they arrived.

    The watermark before reading i is max(watermark, ts[0..i-1]) - lateness; reading i is late
    when the end of its window is at or before that watermark.
    """
    n = ts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    seen = np.empty(n, dtype=np.int64)
    seen[0] = np.iinfo(np.int64).min if watermark is None else watermark + lateness_ms
    if n > 1:
        np.maximum.accumulate(ts[:-1], out=seen[1:])
        if watermark is not None:
            np.maximum(seen[1:], watermark + lateness_ms, out=seen[1:])
    # In place, on one scratch array each: this runs over every reading of a batch.
    unknown = seen[0] == np.iinfo(np.int64).min  # only the first can have seen nothing
    seen -= lateness_ms
    ends = ts // window_ms
    ends += 1
    ends *= window_ms
    result: Bool = ends <= seen
    if unknown:
        result[0] = False
    return result


def aggregate(
    scope: I64, ts: I64, value: F64, window_ms: int, aggregation: Aggregation
) -> WindowValues:
    """Aggregate readings per (scope, event-time window), whatever order they arrive in.

    Within a window readings are taken in event-time order, ties broken by value, so ``last``
    and ``rate_of_change`` do not depend on arrival order.
    """
    n = scope.shape[0]
    if n == 0:
        empty_i = np.zeros(0, dtype=np.int64)
        return WindowValues(empty_i, empty_i, np.zeros(0, dtype=np.float64), empty_i)
    # One int64 key per (scope, window): a single sort key instead of two. Two new arrays in
    # all (fresh memory costs more than arithmetic at history sizes), the rest in place.
    index = ts // window_ms  # becomes ``start`` below
    first_index = int(index.min())
    span = int(index.max()) - first_index + 1
    low = first_index * window_ms
    key = scope * span
    key += index
    key -= first_index
    if aggregation in _ADDITIVE and scope.max() * span + span <= max(4 * n, 1 << 16):
        return _aggregate_dense(key, value, low, span, window_ms, aggregation)
    start = index
    start *= window_ms
    in_order = aggregation in (Aggregation.LAST, Aggregation.RATE_OF_CHANGE)
    if in_order and not _grouped_in_time_order(key, ts, value):
        order = np.lexsort((value, ts, key))
    elif not in_order and bool((key[1:] < key[:-1]).any()):  # a bool array, not an int diff
        order = np.argsort(key, kind="stable")
    else:
        order = None
    if order is not None:
        key, scope, start, ts, value = (
            key[order],
            scope[order],
            start[order],
            ts[order],
            value[order],
        )
    new = np.empty(n, dtype=np.bool_)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    if new.all():  # one reading per window (e.g. 1-minute history): no reductions
        ones = np.broadcast_to(np.int64(1), (n,))  # read-only, and free at any size
        if aggregation is Aggregation.COUNT:
            return WindowValues(scope, start, ones.astype(np.float64), ones)
        if aggregation is Aggregation.RATE_OF_CHANGE:
            return WindowValues(scope, start, np.zeros(n, dtype=np.float64), ones)
        return WindowValues(scope, start, value.astype(np.float64, copy=False), ones)
    first = np.flatnonzero(new)
    last = np.empty_like(first)
    last[:-1] = first[1:] - 1
    last[-1] = n - 1
    count = last - first + 1
    match aggregation:
        case Aggregation.SUM:
            out = np.add.reduceat(value, first)
        case Aggregation.MEAN:
            out = np.add.reduceat(value, first) / count
        case Aggregation.MIN:
            out = np.minimum.reduceat(value, first)
        case Aggregation.MAX:
            out = np.maximum.reduceat(value, first)
        case Aggregation.LAST:
            out = value[last]
        case Aggregation.COUNT:
            out = count.astype(np.float64)
        case Aggregation.RATE_OF_CHANGE:
            hours = (ts[last] - ts[first]) / MS_PER_HOUR
            safe = np.where(hours > 0, hours, 1.0)
            out = np.where(hours > 0, (value[last] - value[first]) / safe, 0.0)
    return WindowValues(scope[first], start[first], out.astype(np.float64), count)


_ADDITIVE = (Aggregation.SUM, Aggregation.MEAN, Aggregation.COUNT)


def _aggregate_dense(
    key: I64, value: F64, low: int, span: int, window_ms: int, aggregation: Aggregation
) -> WindowValues:
    """Sums and counts by bincount over a dense key range: no sort at all."""
    counts = np.bincount(key)
    present = np.flatnonzero(counts)
    count = counts[present].astype(np.int64)
    if aggregation is Aggregation.COUNT:
        out = count.astype(np.float64)
    else:
        out = np.bincount(key, weights=value)[present].astype(np.float64)
        if aggregation is Aggregation.MEAN:
            out = out / count
    keys = present.astype(np.int64)
    return WindowValues(keys // span, low + (keys % span) * window_ms, out, count)


def _grouped_in_time_order(key: I64, ts: I64, value: F64) -> bool:
    """Whether the batch is already sorted by (key, ts, value): no sort needed then."""
    if key.shape[0] < 2:
        return True
    dk = np.diff(key)
    if (dk < 0).any():
        return False
    same = dk == 0
    dt = np.diff(ts)
    if (same & (dt < 0)).any():
        return False
    same &= dt == 0
    return not (same & (np.diff(value) < 0)).any()


def levels(indicator: Indicator, value: F64) -> I8:
    """Rank of the level each value reaches: 0 none, 1.. the indicator's defined levels in order."""
    thresholds = np.array([t for _, t in indicator.thresholds.defined()], dtype=np.float64)
    if indicator.direction is Direction.BELOW:
        rank = np.searchsorted(-thresholds, -value, side="right")
        severity = value
    else:
        severity = value
        if indicator.band is not None:
            severity = np.maximum(indicator.band.low - value, value - indicator.band.high)
        rank = np.searchsorted(thresholds, severity, side="right")
    out: I8 = rank.astype(np.int8)
    missing = np.isnan(severity)
    if missing.any():  # NaN sorts past every threshold; it reaches no level
        out[missing] = 0
    return out


@dataclass(frozen=True, slots=True)
class Partials:
    """Mergeable summaries per (scope, window) of a batch, sorted by scope then window: enough
    to finish any aggregation once every batch and source of a window has been merged."""

    scope: I64
    start: I64
    count: I64
    total: I64  # sum in micro-units: integer, so merging in any order gives the same sum
    low: F64
    high: F64
    first_ts: I64
    first: F64
    last_ts: I64
    last: F64

    def __len__(self) -> int:
        return int(self.scope.shape[0])


def partials(scope: I64, ts: I64, value: F64, window_ms: int) -> Partials:
    """Summaries per (scope, event-time window); first and last in (time, value) order."""
    start = window_starts(ts, window_ms)
    order = np.lexsort((value, ts, start, scope))
    scope, start, ts, value = scope[order], start[order], ts[order], value[order]
    n = scope.shape[0]
    new = np.empty(n, dtype=np.bool_)
    if n:
        new[0] = True
        new[1:] = (scope[1:] != scope[:-1]) | (start[1:] != start[:-1])
    first = np.flatnonzero(new)
    last = np.empty_like(first)
    if n:
        last[:-1] = first[1:] - 1
        last[-1] = n - 1
    if n == 0:
        zero_f = np.zeros(0, dtype=np.float64)
        return Partials(scope, start, first, first, zero_f, zero_f, first, zero_f, first, zero_f)
    return Partials(
        scope=scope[first],
        start=start[first],
        count=(last - first + 1).astype(np.int64),
        total=np.add.reduceat(np.rint(value * MICRO).astype(np.int64), first),
        low=np.minimum.reduceat(value, first),
        high=np.maximum.reduceat(value, first),
        first_ts=ts[first],
        first=value[first],
        last_ts=ts[last],
        last=value[last],
    )
