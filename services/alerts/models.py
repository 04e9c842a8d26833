"""Alerts as the API shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.alerts import Condition, Level, ScopeLevel, TransitionKind
from schemas.base import Contract


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertRead(Contract):
    alert_id: uuid.UUID
    indicator: str
    scope_level: ScopeLevel
    scope_id: str
    condition: Condition = Field(
        description="threshold: a level breached; no_data: a feed went quiet."
    )
    status: AlertStatus
    level: Level | None = Field(description="Current level; null once resolved.")
    peak_level: Level | None = Field(
        description="Highest level reached while open; null for no-data alerts."
    )
    value: float = Field(description="Value at the latest transition.")
    threshold: float | None
    occurrences: int
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None


class TransitionRead(Contract):
    transition_id: uuid.UUID
    seq: int
    kind: TransitionKind
    condition: Condition
    level: Level | None
    previous_level: Level | None
    value: float
    threshold: float | None
    occurrences: int
    observed_at: datetime
    reading_id: uuid.UUID | None


class AlertDetail(AlertRead):
    transitions: list[TransitionRead]


class AlertPage(Contract):
    items: list[AlertRead]
    total: int = Field(description="Alerts matching the filters, over all pages.")
    limit: int
    offset: int
