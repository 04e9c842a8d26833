"""Readings as the API shows them."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from schemas.alerts import ScopeLevel
from schemas.base import Contract


class ReadingRead(Contract):
    reading_id: uuid.UUID
    device_id: str
    metric: str
    value: float
    unit: str
    ts: datetime
    grid: str | None
    street: str | None
    district: str | None
    lon: float | None
    lat: float | None


class LatestReadings(Contract):
    scope_level: ScopeLevel
    scope_id: str
    since: datetime = Field(description="Readings older than this were not considered.")
    items: list[ReadingRead] = Field(description="Newest reading per device and metric.")
    truncated: bool = Field(description="More device-metric pairs exist than the limit.")
