"""Pure evaluation core: a reading, an indicator and the alert's state in, transitions out.

No I/O. The consumer around it feeds readings in partition order and keeps the states.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from rules.indicators import Catalogue, Indicator, Profile
from schemas.alerts import AlertTransition, Level, ScopeLevel, TransitionKind
from schemas.readings import SensorReading

_ALERT_NS = uuid.UUID("2c6b1d0e-8f47-4a0e-b5b3-1f0a9d6e7c42")

ScopeKey = tuple[str, str]  # (indicator code, scope id)


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """State of an open alert for one indicator and scope."""

    alert_id: uuid.UUID
    opened_at: datetime
    level: Level
    seq: int
    occurrences: int


def alert_id_for(
    indicator: str, scope_level: ScopeLevel, scope_id: str, opened_at: datetime
) -> uuid.UUID:
    """Deterministic alert id: the same opening reading always yields the same alert."""
    return uuid.uuid5(
        _ALERT_NS, f"{indicator}|{scope_level.value}|{scope_id}|{opened_at.isoformat()}"
    )


def transition_id_for(alert_id: uuid.UUID, seq: int) -> uuid.UUID:
    """Deterministic transition id: replays re-emit identical records."""
    return uuid.uuid5(_ALERT_NS, f"{alert_id}|{seq}")


def transition(
    indicator: Indicator,
    scope_id: str,
    alert: OpenAlert,
    kind: TransitionKind,
    previous: Level | None,
    to: Level | None,
    value: float,
    threshold: float | None,
    observed_at: datetime,
    reading_id: uuid.UUID | None = None,
) -> AlertTransition:
    """The record of one alert transition (its id follows from the alert and its seq)."""
    return AlertTransition(
        transition_id=transition_id_for(alert.alert_id, alert.seq),
        alert_id=alert.alert_id,
        seq=alert.seq,
        kind=kind,
        indicator=indicator.code,
        scope_level=indicator.scope_level,
        scope_id=scope_id,
        level=to,
        previous_level=previous,
        value=value,
        threshold=threshold,
        occurrences=alert.occurrences,
        opened_at=alert.opened_at,
        observed_at=observed_at,
        reading_id=reading_id,
    )


def scope_id_for(indicator: Indicator, reading: SensorReading) -> str | None:
    """The scope a reading counts towards for this indicator, None when it has no such place."""
    match indicator.scope_level:
        case ScopeLevel.DEVICE:
            return reading.device_id
        case ScopeLevel.GRID:
            return reading.location.grid
        case ScopeLevel.STREET:
            return reading.location.street
        case ScopeLevel.DISTRICT:
            return reading.location.district
        case ScopeLevel.CITY:
            return "city"


def evaluate(
    indicator: Indicator, scope_id: str, state: OpenAlert | None, reading: SensorReading
) -> tuple[OpenAlert | None, AlertTransition | None]:
    """Apply one reading to one indicator scope: the new state and the transition, if any."""
    value = reading.value
    level, threshold = indicator.level_for(value)

    def emit(
        kind: TransitionKind,
        new: OpenAlert,
        previous: Level | None,
        to: Level | None,
        crossed: float | None,
    ) -> AlertTransition:
        return transition(
            indicator, scope_id, new, kind, previous, to, value, crossed, reading.ts,
            reading.reading_id,
        )  # fmt: skip

    if state is None:
        if level is None:
            return None, None
        opened = OpenAlert(
            alert_id=alert_id_for(indicator.code, indicator.scope_level, scope_id, reading.ts),
            opened_at=reading.ts,
            level=level,
            seq=1,
            occurrences=1,
        )
        return opened, emit(TransitionKind.FIRING, opened, None, level, threshold)

    if level is None:
        if indicator.clears(value):
            closed = replace(state, seq=state.seq + 1)
            return None, emit(
                TransitionKind.RESOLVED, closed, state.level, None, indicator.clear_threshold
            )
        # Inside the hysteresis band: still open, nothing new to say.
        return state, None

    counted = replace(state, occurrences=state.occurrences + 1)
    if level is state.level:
        return counted, None
    changed = replace(counted, level=level, seq=state.seq + 1)
    return changed, emit(TransitionKind.LEVEL_CHANGED, changed, state.level, level, threshold)


class Evaluator:
    """Open alerts of the scopes one consumer owns, and the catalogue they are judged by."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.open: dict[ScopeKey, OpenAlert] = {}
        # Emergency mode (平急): the emergency catalogue applies to readings from these districts
        # (every district when the whole city is switched).
        self.emergency: Catalogue | None = None
        self.emergency_districts: frozenset[str] = frozenset()
        self.city_emergency = False

    def use(
        self,
        catalogue: Catalogue,
        *,
        emergency_districts: frozenset[str] = frozenset(),
        city_emergency: bool = False,
    ) -> None:
        """Switch to new definitions and emergency scopes; open alerts carry over by code."""
        self.catalogue = catalogue
        self.emergency = Catalogue(
            i.with_profile(Profile.EMERGENCY) for i in catalogue.by_code.values()
        )
        self.emergency_districts = emergency_districts
        self.city_emergency = city_emergency

    def _catalogue_for(self, reading: SensorReading) -> Catalogue:
        if self.emergency is None:
            return self.catalogue
        if self.city_emergency or reading.location.district in self.emergency_districts:
            return self.emergency
        return self.catalogue

    def apply(self, reading: SensorReading) -> list[AlertTransition]:
        """Evaluate one reading against every indicator that reads its metric."""
        out: list[AlertTransition] = []
        for indicator in self._catalogue_for(reading).by_metric.get(reading.metric, ()):
            scope_id = scope_id_for(indicator, reading)
            if scope_id is None:
                continue
            key = (indicator.code, scope_id)
            state, transition = evaluate(indicator, scope_id, self.open.get(key), reading)
            if state is None:
                self.open.pop(key, None)
            else:
                self.open[key] = state
            if transition is not None:
                out.append(transition)
        return out
