"""The vectorised core agrees with the one-at-a-time reference on random, disordered streams."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import core, reference
from rules.indicators import Aggregation, Indicator

MINUTE = 60_000

# Readings: (scope, event time in ms, value). Times cluster so windows hold several readings,
# arrive in any order (lists are unsorted) and include duplicates of the same instant.
readings = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(0, 30 * MINUTE) | st.sampled_from([0, MINUTE, 5 * MINUTE - 1, 5 * MINUTE]),
        st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, 10.0, 20.0]),
    ),
    max_size=200,
)


def arrays(rows: list[tuple[int, int, float]]) -> tuple[core.I64, core.I64, core.F64]:
    scope = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    value = np.array([r[2] for r in rows], dtype=np.float64)
    return scope, ts, value


@settings(max_examples=150, deadline=None)
@given(
    rows=readings,
    aggregation=st.sampled_from(list(Aggregation)),
    window=st.sampled_from([MINUTE, 5 * MINUTE, 7_000]),
)
def test_aggregate_matches_reference(
    rows: list[tuple[int, int, float]], aggregation: Aggregation, window: int
) -> None:
    scope, ts, value = arrays(rows)
    fast = core.aggregate(scope, ts, value, window, aggregation)
    slow = reference.aggregate(scope.tolist(), ts.tolist(), value.tolist(), window, aggregation)
    assert len(fast) == len(slow)
    for i, (s, start, result, count) in enumerate(slow):
        assert (int(fast.scope[i]), int(fast.start[i]), int(fast.count[i])) == (s, start, count)
        assert math.isclose(float(fast.value[i]), result, rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=150, deadline=None)
@given(rows=readings, window=st.sampled_from([MINUTE, 5 * MINUTE]), lateness=st.integers(0, 10))
def test_too_late_readings_match_reference(
    rows: list[tuple[int, int, float]], window: int, lateness: int
) -> None:
    _, ts, _ = arrays(rows)
    fast = core.late_mask(ts, window, lateness * MINUTE // 2)
    assert fast.tolist() == reference.late(ts.tolist(), window, lateness * MINUTE // 2)


def test_a_reading_after_the_watermark_passed_its_window_is_late() -> None:
    ts = np.array([0, 10 * MINUTE, 30_000, 9 * MINUTE], dtype=np.int64)
    assert core.late_mask(ts, MINUTE, 2 * MINUTE).tolist() == [False, False, True, False]
    # A watermark carried over from earlier batches counts too.
    assert core.late_mask(ts[2:], MINUTE, 0, watermark=MINUTE).tolist() == [True, False]


CATALOGUE_SHAPES = [
    {"direction": "above", "thresholds": {"blue": 10, "yellow": 20, "orange": 30, "red": 50}},
    {"direction": "below", "thresholds": {"blue": 30, "orange": 10, "red": 5}},
    {
        "direction": "outside",
        "band": {"low": 209, "high": 231},
        "thresholds": {"yellow": 11, "red": 44},
    },
]


@settings(max_examples=100, deadline=None)
@given(
    shape=st.sampled_from(CATALOGUE_SHAPES),
    values=st.lists(
        st.floats(-1000, 1000, allow_nan=False) | st.sampled_from([5.0, 10.0, 30.0, 242.0]),
        max_size=100,
    ),
)
def test_levels_match_reference(shape: dict[str, object], values: list[float]) -> None:
    indicator = Indicator.model_validate(
        {
            "code": "x.y",
            "name_zh": "指标",
            "name_en": "Indicator",
            "domain": "water",
            "unit": "u",
            "metric": "m",
            **shape,
        }
    )
    fast = core.levels(indicator, np.array(values, dtype=np.float64))
    assert fast.tolist() == [reference.level_rank(indicator, v) for v in values]
