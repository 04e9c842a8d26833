"""Alert identity and transition records: deterministic ids, so a replay re-emits identical
records. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from rules.indicators import Indicator
from schemas.alerts import AlertTransition, Condition, Level, ScopeLevel, TransitionKind

_ALERT_NS = uuid.UUID("2c6b1d0e-8f47-4a0e-b5b3-1f0a9d6e7c42")


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """State of an open alert for one indicator and scope."""

    alert_id: uuid.UUID
    opened_at: datetime
    level: Level | None  # None for a no-data alert
    seq: int
    occurrences: int


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def alert_id_for(
    indicator: str,
    scope_level: ScopeLevel,
    scope_id: str,
    opened_at: datetime,
    condition: Condition = Condition.THRESHOLD,
) -> uuid.UUID:
    """Deterministic alert id: the same opening always yields the same alert."""
    name = indicator if condition is Condition.THRESHOLD else f"{indicator}#{condition.value}"
    return uuid.uuid5(_ALERT_NS, f"{name}|{scope_level.value}|{scope_id}|{opened_at.isoformat()}")


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
    condition: Condition = Condition.THRESHOLD,
) -> AlertTransition:
    """The record of one alert transition (its id follows from the alert and its seq)."""
    return AlertTransition(
        transition_id=transition_id_for(alert.alert_id, alert.seq),
        alert_id=alert.alert_id,
        seq=alert.seq,
        kind=kind,
        condition=condition,
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
    )
