"""Alert identity and transition records: deterministic ids, so a replay re-emits identical
records. Pure."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

import orjson
from pydantic import TypeAdapter

from rules.indicators import Indicator
from schemas.alerts import AlertTransition, Condition, Level, ScopeLevel, TransitionKind
from schemas.base import UtcDatetime, uuid5_hex, uuid_text

_ALERT_NS = uuid.UUID("2c6b1d0e-8f47-4a0e-b5b3-1f0a9d6e7c42")
_ALERT_NS_BYTES = _ALERT_NS.bytes
_INSTANT: TypeAdapter[datetime] = TypeAdapter(UtcDatetime)


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


class Change(NamedTuple):
    """One alert transition as the life cycle finds it. ``model`` is its record,
    ``record`` the key and JSON it is sent with, written without the model: the engine makes
    thousands at a typhoon's window close, and the model cost as much as a dozen readings.
    tests/unit/test_windows.py holds the two byte for byte."""

    indicator: Indicator
    scope_id: str
    alert: OpenAlert  # the alert after the change: its id, seq and occurrences
    kind: TransitionKind
    previous: Level | None
    to: Level | None
    value: float
    threshold: float | None
    observed_ms: int  # event time of the change
    condition: Condition = Condition.THRESHOLD

    def model(self) -> AlertTransition:
        """The record of the change (its id follows from the alert and its seq)."""
        alert, indicator = self.alert, self.indicator
        return AlertTransition(
            transition_id=transition_id_for(alert.alert_id, alert.seq),
            alert_id=alert.alert_id,
            seq=alert.seq,
            kind=self.kind,
            condition=self.condition,
            indicator=indicator.code,
            scope_level=indicator.scope_level,
            scope_id=self.scope_id,
            level=self.to,
            previous_level=self.previous,
            value=self.value,
            threshold=self.threshold,
            occurrences=alert.occurrences,
            opened_at=alert.opened_at,
            observed_at=at_ms(self.observed_ms),
        )

    def record(self) -> tuple[bytes, bytes]:
        """``model()``'s key and JSON bytes, as the alerts topic carries them."""
        alert, indicator = self.alert, self.indicator
        for number in (self.value, self.threshold):
            if number is not None and not math.isfinite(number):
                raise ValueError(f"{indicator.code} at {self.scope_id}: a value of {number}")
        alert_id = str(alert.alert_id)
        key = f"{indicator.code}|{indicator.scope_level.value}|{self.scope_id}"
        body = {
            "transition_id": uuid_text(uuid5_hex(_ALERT_NS_BYTES, f"{alert_id}|{alert.seq}")),
            "alert_id": alert_id,
            "seq": alert.seq,
            # Enum members as they are: orjson writes their values, and reading .value
            # costs more than the rest of the dict (~1.5 us each on Python 3.11).
            "kind": self.kind,
            "condition": self.condition,
            "indicator": indicator.code,
            "scope_level": indicator.scope_level,
            "scope_id": self.scope_id,
            "level": self.to,
            "previous_level": self.previous,
            "value": self.value,
            "threshold": self.threshold,
            "occurrences": alert.occurrences,
            "opened_at": instant_text(alert.opened_at),
            "observed_at": instant_text(at_ms(self.observed_ms)),
            "reading_id": None,
        }
        return key.encode(), orjson.dumps(body)


@lru_cache(maxsize=4096)
def instant_text(at: datetime) -> str:
    """An instant as the contracts write it in JSON (records of one moment share it)."""
    text: str = _INSTANT.dump_python(at, mode="json")
    return text
