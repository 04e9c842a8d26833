"""Alert life cycle: for-duration, escalation, hysteresis, time-driven changes, staleness, ids."""

from __future__ import annotations

import random
import uuid

import pytest

from rules.alerts import Change, OpenAlert, alert_id_for, at_ms
from rules.indicators import Indicator
from rules.windows import Judge, ScopeState, advance, indicator_value, observe, value_record
from schemas.alerts import AlertTransition, Condition, Level, ScopeLevel, TransitionKind
from schemas.indicator_values import value_id_for
from services.kafka import encode

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
    indicator: Indicator, values: list[float | None], until_minute: int | None = None
) -> tuple[ScopeState, list[AlertTransition]]:
    """Feed one window per minute (None: a minute with no data), then let time run on."""
    judge = Judge.of(indicator)
    state, out = ScopeState(), list[Change]()
    for minute, value in enumerate(values):
        if value is not None:
            observe(judge, "dev-1", state, minute * MINUTE, value, out)
    if until_minute is not None:
        advance(judge, "dev-1", state, until_minute * MINUTE, out)
    return state, [change.model() for change in out]


def kinds(out: list[AlertTransition]) -> list[tuple[TransitionKind, Level | None]]:
    return [(t.kind, t.level) for t in out]


def minutes(out: list[AlertTransition]) -> list[float]:
    return [t.observed_at.timestamp() / 60 for t in out]


def test_each_level_must_hold_for_the_duration() -> None:
    _, out = run(depth(for_seconds=180), [12, 12, 25, 25, 25, 12])
    # blue held from minute 0: due at 3; yellow held from minute 2: due at 5, but the
    # window closing at 6 shows blue again, which de-escalates at once.
    assert kinds(out) == [
        (TransitionKind.FIRING, Level.BLUE),
        (TransitionKind.LEVEL_CHANGED, Level.YELLOW),
        (TransitionKind.LEVEL_CHANGED, Level.BLUE),
    ]
    assert minutes(out) == [3, 5, 6]


def test_a_normal_window_restarts_the_duration_and_a_gap_holds_the_value() -> None:
    _, broken = run(depth(for_seconds=180), [12, 12, 5, 12, 12])
    assert broken == []
    _, gap = run(depth(for_seconds=180), [12, None, None, 12])
    assert kinds(gap) == [(TransitionKind.FIRING, Level.BLUE)]
    assert minutes(gap) == [3]  # while no new data came, the held value kept counting


def test_time_alone_fires_escalates_and_resolves() -> None:
    # One breaching window then silence: the alert fires when the duration runs out.
    _, out = run(depth(for_seconds=600), [55], until_minute=30)
    assert kinds(out) == [(TransitionKind.FIRING, Level.RED)]
    assert minutes(out) == [10]
    # Clearing also completes with no new window.
    _, cleared = run(depth(clear_for_seconds=300), [12, 1], until_minute=30)
    assert kinds(cleared) == [(TransitionKind.FIRING, Level.BLUE), (TransitionKind.RESOLVED, None)]
    assert minutes(cleared) == [1, 6]


def test_advancing_in_steps_equals_advancing_at_once() -> None:
    judge = Judge.of(depth(for_seconds=300, clear_for_seconds=120, expected_every_seconds=60))
    values = [12, 25, None, 35, 60, None, None, 2, 2, None, None, None, None, None, None, 40]
    once, stepped = ScopeState(), ScopeState()
    out_once: list[Change] = []
    out_stepped: list[Change] = []
    for minute, value in enumerate(values):
        if value is not None:
            observe(judge, "d", once, minute * MINUTE, value, out_once)
            observe(judge, "d", stepped, minute * MINUTE, value, out_stepped)
        for second in range(0, 60, 7):  # the stepped one is told the time often
            advance(judge, "d", stepped, minute * MINUTE + 60_000 + second * 1000, out_stepped)
    assert out_once == out_stepped[: len(out_once)]
    assert len(out_once) >= 4


def test_escalation_de_escalation_and_hysteresis_clearing() -> None:
    state, out = run(depth(), [12, 55, 31, 8, 4])
    assert kinds(out) == [
        (TransitionKind.FIRING, Level.BLUE),
        (TransitionKind.LEVEL_CHANGED, Level.RED),
        (TransitionKind.LEVEL_CHANGED, Level.ORANGE),
        (TransitionKind.LEVEL_CHANGED, Level.BLUE),  # 8 is inside the band: open, lowest level
        (TransitionKind.RESOLVED, None),  # 4 is under the clear threshold 5
    ]
    assert [t.seq for t in out] == [1, 2, 3, 4, 5]
    assert len({t.alert_id for t in out}) == 1
    assert out[-1].occurrences == 3
    assert state.open is None


def test_clearing_must_hold_for_clear_for_seconds() -> None:
    _, out = run(depth(clear_for_seconds=120), [12, 1, 12, 1, 1])
    assert kinds(out) == [(TransitionKind.FIRING, Level.BLUE), (TransitionKind.RESOLVED, None)]
    assert minutes(out) == [1, 5]


def test_a_quiet_feed_raises_a_no_data_alert_and_data_resolves_it() -> None:
    indicator = depth(expected_every_seconds=60)  # stale after 60 s window + 3 x 60 s
    state, out = run(indicator, [12, 12], until_minute=20)
    assert [(t.kind, t.condition) for t in out] == [
        (TransitionKind.FIRING, Condition.THRESHOLD),
        (TransitionKind.FIRING, Condition.NO_DATA),
    ]
    assert minutes(out) == [1, 6]  # last window ended at 2, + 4 minutes
    assert out[1].level is None
    assert state.open is not None  # the threshold alert stays open: nobody knows better
    changes: list[Change] = []
    observe(Judge.of(indicator), "dev-1", state, 20 * MINUTE, 2.0, changes)
    back = [change.model() for change in changes]
    assert [(t.kind, t.condition) for t in back] == [
        (TransitionKind.RESOLVED, Condition.NO_DATA),
        (TransitionKind.RESOLVED, Condition.THRESHOLD),
    ]
    assert back[0].alert_id == out[1].alert_id != out[0].alert_id


def test_a_normal_window_after_a_silence_still_finds_the_feed_went_quiet() -> None:
    # Normal windows of an idle scope take a short cut; it must not skip staleness. Stale
    # after 60 s window + 3 x 60 s: a window ending at minute 5 (quiet since 1) is in time;
    # one ending at minute 11 (quiet since 5) comes after the feed was declared quiet at 9.
    indicator = depth(expected_every_seconds=60)
    state, out = run(indicator, [2, None, None, None, 3])
    assert out == []
    state, out = run(indicator, [2, None, None, None, 3, *[None] * 5, 4])
    assert [(t.kind, t.condition) for t in out] == [
        (TransitionKind.FIRING, Condition.NO_DATA),
        (TransitionKind.RESOLVED, Condition.NO_DATA),
    ]
    assert minutes(out) == [9, 11]
    assert state.idle()
    assert state.no_data is None
    assert state.last_end_ms == 11 * MINUTE


def test_replay_gives_identical_ids() -> None:
    values: list[float | None] = [12, 55, 3, 40, 1]
    _, first = run(depth(), values)
    _, again = run(depth(), values)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in again]
    assert len({t.alert_id for t in first}) == 2


def test_indicator_value_record_of_a_window() -> None:
    record = indicator_value(Judge.of(depth()), "dev-1", 2 * MINUTE, 31.0, 4)
    assert record.level is Level.ORANGE
    assert (record.window_end - record.window_start).total_seconds() == 60
    assert record == indicator_value(Judge.of(depth()), "dev-1", 2 * MINUTE, 31.0, 4)
    # The id is uuid5 of indicator, scope and window start, as it has always been: a replay
    # by a newer engine upserts the values an older one stored.
    name = f"water.depth|device|dev-1|{record.window_start.isoformat()}"
    assert record.value_id == uuid.uuid5(uuid.UUID("9b0f3c52-6d7e-4e8a-a1c4-3e5d2f7b8a90"), name)
    assert record.value_id == value_id_for(
        "water.depth", ScopeLevel.DEVICE, "dev-1", record.window_start
    )


@pytest.mark.parametrize(
    "indicator",
    [
        depth(),
        Indicator.model_validate(
            {
                **depth().model_dump(),
                "direction": "below",
                "thresholds": {"blue": 30, "yellow": 20, "red": 5},
            }
        ),
        Indicator.model_validate(
            {
                **depth().model_dump(),
                "direction": "outside",
                "band": {"low": 198, "high": 231},
                "thresholds": {"blue": 11, "yellow": 22, "red": 44},
            }
        ),
    ],
    ids=["above", "below", "outside"],
)
def test_indicator_value_level_is_the_indicators_level(indicator: Indicator) -> None:
    judge = Judge.of(indicator)
    assert judge.rank(float("nan")) == 0
    for value in [*range(-5, 300), 0.5, 19.999, 20.0, 20.001, 1e300]:
        record = indicator_value(judge, "dev-1", 0, float(value), 1)
        assert record.level == indicator.level_for(float(value))[0], value


def test_value_record_is_the_models_key_and_bytes() -> None:
    """The engine sends ``value_record``; the writer and every reader parse the contract."""
    rng = random.Random(7)
    values = [0.0, -0.0, 1e-7, 0.1, 2.5, 19.999, 20.0, 1e16, 1.7e308, -3.25e-300, 123456.789]
    values += [rng.uniform(-1e6, 1e6) for _ in range(300)] + [rng.random() for _ in range(300)]
    starts = [0, 1, 1_500, 2 * MINUTE, 1_782_864_000_123, 4_102_444_800_000]
    for indicator in [depth(), depth(scope_level="district", window_seconds=300)]:
        judge = Judge.of(indicator)
        for i, value in enumerate(values):
            start, samples = starts[i % len(starts)], rng.randrange(0, 10**6)
            model = indicator_value(judge, f"s-{i}", start, value, samples)
            assert value_record(judge, f"s-{i}", start, value, samples) == (
                model.key,
                encode(model),
            ), value


def test_a_changes_record_is_its_models_key_and_bytes() -> None:
    """The engine sends ``Change.record``; the writer and every reader parse the contract."""
    rng = random.Random(11)
    instants = [0, 1, 1_500, 2 * MINUTE, 1_782_864_000_123, 4_102_444_800_000]
    numbers = [0.0, -0.0, 1e-7, 0.1, 19.999, 1e16, 1.7e308, -3.25e-300, 123456.789]
    numbers += [rng.uniform(-1e6, 1e6) for _ in range(200)]
    levels: list[Level | None] = [None, *Level]
    for i, value in enumerate(numbers):
        indicator = depth(scope_level=rng.choice(list(ScopeLevel)))
        opened = at_ms(rng.choice(instants))
        condition = rng.choice(list(Condition))
        alert = OpenAlert(
            alert_id_for(indicator.code, indicator.scope_level, f"s-{i}", opened, condition),
            opened,
            rng.choice(levels),
            rng.randrange(1, 10**6),
            rng.randrange(1, 10**6),
        )
        change = Change(
            indicator,
            f"s-{i}",
            alert,
            rng.choice(list(TransitionKind)),
            rng.choice(levels),
            rng.choice(levels),
            value,
            rng.choice([None, rng.choice(numbers)]),
            rng.choice(instants) + rng.randrange(0, 1000),
            condition,
        )
        model = change.model()
        assert change.record() == (model.key, encode(model)), change


def test_a_change_with_a_value_json_cannot_carry_is_refused() -> None:
    """The model would write NaN or infinity as null, which no reader of the topic accepts."""
    alert = OpenAlert(uuid.uuid4(), at_ms(0), Level.RED, 1, 1)
    for bad in [float("nan"), float("inf"), float("-inf")]:
        for value, threshold in [(bad, 1.0), (1.0, bad)]:
            change = Change(depth(), "d", alert, TransitionKind.FIRING, None, Level.RED, value,
                            threshold, 0)  # fmt: skip
            with pytest.raises(ValueError, match="a value of"):
                change.record()


def test_value_record_refuses_what_the_contract_refuses() -> None:
    for value in [float("nan"), float("inf"), float("-inf")]:
        with pytest.raises(ValueError, match="window's value"):
            value_record(Judge.of(depth()), "dev-1", 0, value, 1)


def test_preview_equals_stepping_every_window() -> None:
    import numpy as np

    from rules import core
    from rules.preview import preview

    rng = np.random.default_rng(3)
    indicator = depth(for_seconds=120, clear_for_seconds=60)
    judge = Judge.of(indicator, stale_factor=None)
    n = 4_000
    scope = rng.integers(0, 5, n).astype(np.int64)
    ts = rng.integers(0, 600 * MINUTE, n).astype(np.int64)
    value = np.where(rng.random(n) < 0.2, rng.uniform(0, 60, n), rng.uniform(0, 8, n))
    ids = [f"dev-{i}" for i in range(5)]
    fast = preview(indicator, ids, scope, ts, value)
    windows = core.aggregate(scope, ts, value, MINUTE, indicator.aggregation)
    changes: list[Change] = []
    states: dict[int, ScopeState] = {}
    for i in range(len(windows)):
        s = int(windows.scope[i])
        state = states.setdefault(s, ScopeState())
        observe(judge, ids[s], state, int(windows.start[i]), float(windows.value[i]), changes)
    until = int(windows.start.max()) + MINUTE
    for s, state in sorted(states.items()):
        advance(judge, ids[s], state, until, changes)
    slow = [change.model() for change in changes]
    assert len(slow) > 20
    key = lambda t: (t.scope_id, t.observed_at, t.seq)  # noqa: E731
    assert sorted(fast.transitions, key=key) == sorted(slow, key=key)
