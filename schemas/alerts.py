"""Alert transitions emitted by the rules engine (topic ``alerts.v1``)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from pydantic import Field

from schemas.base import Code, Contract, Number, UtcDatetime


class Level(StrEnum):
    """Chinese four-level warning scale, lowest to highest: 蓝 IV, 黄 III, 橙 II, 红 I."""

    BLUE = "blue"
    YELLOW = "yellow"
    ORANGE = "orange"
    RED = "red"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Level.BLUE: 1, Level.YELLOW: 2, Level.ORANGE: 3, Level.RED: 4}


class ScopeLevel(StrEnum):
    """Spatial scope an indicator is evaluated at."""

    DEVICE = "device"
    GRID = "grid"
    STREET = "street"
    DISTRICT = "district"
    CITY = "city"


class TransitionKind(StrEnum):
    """What happened to an alert."""

    FIRING = "firing"  # opened at a level
    LEVEL_CHANGED = "level_changed"  # escalated or de-escalated while open
    RESOLVED = "resolved"  # back under the clear threshold


class Condition(StrEnum):
    """What an alert is about: a threshold breached, or a feed that went quiet."""

    THRESHOLD = "threshold"
    NO_DATA = "no_data"  # no data within the indicator's update frequency (staleness)


class AlertTransition(Contract):
    """One change of one alert. Ids are deterministic so a replay re-emits identical records."""

    transition_id: uuid.UUID
    alert_id: uuid.UUID = Field(description="Stable for the alert's whole life, open to resolved.")
    seq: int = Field(ge=1, description="1 for the opening transition, then +1 per transition.")
    kind: TransitionKind
    condition: Condition = Condition.THRESHOLD
    indicator: Code
    scope_level: ScopeLevel
    scope_id: Code
    level: Level | None = Field(
        description="Level after the transition; null once resolved and for no-data alerts."
    )
    previous_level: Level | None
    value: Number
    threshold: Number | None = Field(description="The threshold crossed, or the clear threshold.")
    occurrences: int = Field(ge=1, description="Breaching windows seen while the alert is open.")
    opened_at: UtcDatetime
    observed_at: UtcDatetime = Field(
        description="Event time of the change: the end of the window that caused it, or when "
        "a for-duration, clear-for or staleness limit ran out."
    )
    reading_id: uuid.UUID | None = None

    @property
    def key(self) -> bytes:
        """Partition key: all transitions of one indicator scope stay in order on one partition."""
        return f"{self.indicator}|{self.scope_level}|{self.scope_id}".encode()
