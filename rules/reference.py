"""Slow, obviously-correct reference for rules/core.py: one reading at a time, plain Python.

Used by the property tests and by the benchmark as the baseline; never by the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from rules.indicators import Aggregation, Indicator

Row = tuple[int, int, float, int]  # scope, window start, value, count


def late(ts: Sequence[int], window_ms: int, lateness_ms: int) -> list[bool]:
    out: list[bool] = []
    highest: int | None = None
    for t in ts:
        end = (t // window_ms) * window_ms + window_ms
        out.append(highest is not None and end <= highest - lateness_ms)
        highest = t if highest is None else max(highest, t)
    return out


def aggregate(
    scope: Sequence[int],
    ts: Sequence[int],
    value: Sequence[float],
    window_ms: int,
    aggregation: Aggregation,
) -> list[Row]:
    groups: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for s, t, v in zip(scope, ts, value, strict=True):
        groups.setdefault((s, (t // window_ms) * window_ms), []).append((t, v))
    rows: list[Row] = []
    for (s, start), points in sorted(groups.items()):
        points.sort()
        values = [v for _, v in points]
        if aggregation is Aggregation.SUM:
            result = sum(values)
        elif aggregation is Aggregation.MEAN:
            result = sum(values) / len(values)
        elif aggregation is Aggregation.MIN:
            result = min(values)
        elif aggregation is Aggregation.MAX:
            result = max(values)
        elif aggregation is Aggregation.LAST:
            result = values[-1]
        elif aggregation is Aggregation.COUNT:
            result = float(len(values))
        else:
            hours = (points[-1][0] - points[0][0]) / 3_600_000
            result = (values[-1] - values[0]) / hours if hours > 0 else 0.0
        rows.append((s, start, result, len(values)))
    return rows


def level_rank(indicator: Indicator, value: float) -> int:
    level, _ = indicator.level_for(value)
    if level is None:
        return 0
    return [lv for lv, _ in indicator.thresholds.defined()].index(level) + 1
