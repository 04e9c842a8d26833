"""Alert life cycle over closed windows: for-duration, escalation, hysteresis, ids."""

from __future__ import annotations

from rules.indicators import Indicator
from rules.windows import ScopeState, indicator_value, step
from schemas.alerts import AlertTransition, Level, TransitionKind

MINUTE = 60_000


def depth(**change: object) -> Indicator:
    return Indicator.model_validate(
        {
            "code": "water.depth",
            "name_zh": "积水深度",
            "name_en": "Depth",
            "domain": "water",
            "unit": "cm",
            "metric": "waterlogging_depth",
            "aggregation": "max",
            "window_seconds": 60,
            "thresholds": {"blue": 10, "yellow": 20, "orange": 30, "red": 50},
            "hysteresis": 5,
            **change,
        }
    )


def run(
    indicator: Indicator, values: list[float | None]
) -> tuple[ScopeState, list[AlertTransition]]:
    """Feed one value per minute; None is a minute with no data (a gap)."""
    state, out = ScopeState(), []
    for minute, value in enumerate(values):
        if value is None:
            continue
        state, transition = step(indicator, "dev-1", state, minute * MINUTE, value)
        if transition is not None:
            out.append(transition)
    return state, out


def kinds(out: list[AlertTransition]) -> list[tuple[TransitionKind, Level | None]]:
    return [(t.kind, t.level) for t in out]


def test_fires_only_after_the_level_held_for_the_duration() -> None:
    _, out = run(depth(for_seconds=180), [12, 12, 25, 12])
    assert kinds(out) == [
        (TransitionKind.FIRING, Level.YELLOW),  # the level of the window completing the run
        (TransitionKind.LEVEL_CHANGED, Level.BLUE),
    ]
    assert out[0].opened_at.timestamp() == 3 * 60  # end of the third breaching window


def test_a_normal_window_or_a_gap_restarts_the_duration() -> None:
    _, broken = run(depth(for_seconds=180), [12, 12, 5, 12, 12])
    assert broken == []
    _, gap = run(depth(for_seconds=180), [12, 12, None, 12, 12])
    assert gap == []


def test_escalation_de_escalation_and_hysteresis_clearing() -> None:
    state, out = run(depth(), [12, 55, 31, 8, 4])
    assert kinds(out) == [
        (TransitionKind.FIRING, Level.BLUE),
        (TransitionKind.LEVEL_CHANGED, Level.RED),
        (TransitionKind.LEVEL_CHANGED, Level.ORANGE),
        (TransitionKind.RESOLVED, None),  # 8 is inside the band (clear under 5), 4 clears
    ]
    assert [t.seq for t in out] == [1, 2, 3, 4]
    assert len({t.alert_id for t in out}) == 1
    assert out[-1].occurrences == 3
    assert state.open is None


def test_clearing_must_hold_for_clear_for_seconds() -> None:
    _, out = run(depth(clear_for_seconds=120), [12, 1, 12, 1, 1])
    assert kinds(out) == [(TransitionKind.FIRING, Level.BLUE), (TransitionKind.RESOLVED, None)]
    assert out[-1].observed_at.timestamp() == 5 * 60


def test_replay_gives_identical_ids() -> None:
    values: list[float | None] = [12, 55, 3, 40, 1]
    _, first = run(depth(), values)
    _, again = run(depth(), values)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in again]
    assert len({t.alert_id for t in first}) == 2


def test_indicator_value_record_of_a_window() -> None:
    record = indicator_value(depth(), "dev-1", 2 * MINUTE, 31.0, 4)
    assert record.level is Level.ORANGE
    assert (record.window_end - record.window_start).total_seconds() == 60
    assert record == indicator_value(depth(), "dev-1", 2 * MINUTE, 31.0, 4)


def test_preview_equals_stepping_every_window() -> None:
    import numpy as np

    from rules import core
    from rules.preview import preview

    rng = np.random.default_rng(3)
    indicator = depth(for_seconds=120, clear_for_seconds=60)
    n = 4_000
    scope = rng.integers(0, 5, n).astype(np.int64)
    ts = rng.integers(0, 600 * MINUTE, n).astype(np.int64)
    value = np.where(rng.random(n) < 0.2, rng.uniform(0, 60, n), rng.uniform(0, 8, n))
    ids = [f"dev-{i}" for i in range(5)]
    fast = preview(indicator, ids, scope, ts, value)
    windows = core.aggregate(scope, ts, value, MINUTE, indicator.aggregation)
    slow: list[AlertTransition] = []
    states: dict[int, ScopeState] = {}
    for i in range(len(windows)):
        s = int(windows.scope[i])
        state, transition = step(
            indicator, ids[s], states.get(s, ScopeState()), int(windows.start[i]), windows.value[i]
        )
        states[s] = state
        if transition is not None:
            slow.append(transition)
    assert len(slow) > 20
    assert fast.transitions == slow
