"""The pure evaluation core: transitions, hysteresis and deterministic identity."""

from __future__ import annotations

from collections.abc import Sequence

from rules.evaluate import Evaluator, alert_id_for
from rules.indicators import Catalogue
from schemas.alerts import AlertTransition, Level, ScopeLevel, TransitionKind
from tests.conftest import T0, make_reading


def run(values: Sequence[float], device: str = "dev-1") -> list[AlertTransition]:
    evaluator = Evaluator(Catalogue.from_yaml())
    out: list[AlertTransition] = []
    for i, value in enumerate(values):
        out += evaluator.apply(make_reading(value, at=i, device=device))
    return out


def test_quiet_values_raise_nothing() -> None:
    assert run([1, 2, 3, 9.9]) == []


def test_an_alert_fires_escalates_de_escalates_and_resolves() -> None:
    transitions = run([5, 12, 14, 33, 55, 21, 7, 4.9, 3])
    assert [(t.kind, t.level, t.previous_level) for t in transitions] == [
        (TransitionKind.FIRING, Level.BLUE, None),
        (TransitionKind.LEVEL_CHANGED, Level.ORANGE, Level.BLUE),
        (TransitionKind.LEVEL_CHANGED, Level.RED, Level.ORANGE),
        (TransitionKind.LEVEL_CHANGED, Level.YELLOW, Level.RED),
        (TransitionKind.RESOLVED, None, Level.YELLOW),
    ]
    assert [t.seq for t in transitions] == [1, 2, 3, 4, 5]
    assert len({t.alert_id for t in transitions}) == 1
    assert len({t.transition_id for t in transitions}) == 5
    assert [t.occurrences for t in transitions] == [1, 3, 4, 5, 5]
    assert transitions[-1].threshold == 5  # the clear threshold: blue 10 minus hysteresis 5


def test_values_inside_the_hysteresis_band_keep_the_alert_open() -> None:
    transitions = run([12, 9, 6, 5, 9.9, 12])
    assert [t.kind for t in transitions] == [TransitionKind.FIRING]


def test_a_new_breach_after_resolution_opens_a_new_alert() -> None:
    transitions = run([12, 1, 12])
    assert [t.kind for t in transitions] == [
        TransitionKind.FIRING,
        TransitionKind.RESOLVED,
        TransitionKind.FIRING,
    ]
    assert transitions[0].alert_id != transitions[2].alert_id


def test_replaying_a_stream_emits_identical_transitions() -> None:
    values = [5, 12, 33, 55, 2, 40, 1]
    assert run(values) == run(values)


def test_alert_identity_depends_on_indicator_scope_and_opening_time() -> None:
    a = alert_id_for("x", ScopeLevel.DEVICE, "d", T0)
    assert a == alert_id_for("x", ScopeLevel.DEVICE, "d", T0)
    assert a != alert_id_for("x", ScopeLevel.DEVICE, "e", T0)
    assert a != alert_id_for("y", ScopeLevel.DEVICE, "d", T0)


def test_scopes_are_independent() -> None:
    evaluator = Evaluator(Catalogue.from_yaml())
    a = evaluator.apply(make_reading(60, device="a"))
    b = evaluator.apply(make_reading(12, device="b"))
    assert [(t.scope_id, t.level) for t in a + b] == [("a", Level.RED), ("b", Level.BLUE)]
    assert set(evaluator.open) == {
        ("water.waterlogging_depth", "a"),
        ("water.waterlogging_depth", "b"),
    }


def test_metrics_without_indicators_are_ignored() -> None:
    evaluator = Evaluator(Catalogue.from_yaml())
    assert evaluator.apply(make_reading(1e9, metric="unknown_metric")) == []


def test_falling_indicators_fire_when_the_value_drops() -> None:
    evaluator = Evaluator(Catalogue.from_yaml())
    out = []
    for i, speed in enumerate([45, 25, 4, 31, 34]):
        out += evaluator.apply(make_reading(speed, at=i, metric="road_speed", unit="km/h"))
    assert [(t.kind, t.level) for t in out] == [
        (TransitionKind.FIRING, Level.BLUE),
        (TransitionKind.LEVEL_CHANGED, Level.RED),
        (TransitionKind.RESOLVED, None),  # 34 > 30 + hysteresis 3; 31 stayed in the band
    ]
