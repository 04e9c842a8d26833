"""History as the API shows it: series, latest values, alert history."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import Field

from schemas.alerts import Level, ScopeLevel, TransitionKind
from schemas.base import Contract


class Bucket(StrEnum):
    """Bucket sizes a series can be asked for."""

    MIN_1 = "1m"
    MIN_5 = "5m"
    MIN_15 = "15m"
    HOUR_1 = "1h"
    HOUR_6 = "6h"
    DAY_1 = "1d"

    @property
    def width(self) -> timedelta:
        return _WIDTHS[self]


_WIDTHS = {
    Bucket.MIN_1: timedelta(minutes=1),
    Bucket.MIN_5: timedelta(minutes=5),
    Bucket.MIN_15: timedelta(minutes=15),
    Bucket.HOUR_1: timedelta(hours=1),
    Bucket.HOUR_6: timedelta(hours=6),
    Bucket.DAY_1: timedelta(days=1),
}


class Aggregation(StrEnum):
    """How the readings in one bucket become one value."""

    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    SUM = "sum"
    COUNT = "count"
    LAST = "last"


class SeriesPoint(Contract):
    bucket: datetime = Field(description="Start of the bucket.")
    value: float
    samples: int = Field(description="Readings that went into the value.")


class Series(Contract):
    indicator: str
    metric: str
    unit: str
    scope_level: ScopeLevel
    scope_id: str
    start: datetime
    end: datetime
    bucket: Bucket
    aggregation: Aggregation
    source: str = Field(description="Rollup the series was read from (readings_1m/readings_1h).")
    points: list[SeriesPoint] = Field(description="Buckets with data, oldest first.")


class LatestValue(Contract):
    indicator: str
    scope_level: ScopeLevel
    scope_id: str
    value: float = Field(description="The worst latest device value in the scope.")
    unit: str
    ts: datetime
    device_id: str = Field(description="The device that reported it.")


class LatestValues(Contract):
    since: datetime = Field(description="Readings older than this were not considered.")
    items: list[LatestValue]
    truncated: bool = Field(description="Some indicator had more scopes than the limit.")


class TransitionHistory(Contract):
    transition_id: uuid.UUID
    alert_id: uuid.UUID
    seq: int
    kind: TransitionKind
    indicator: str
    scope_level: ScopeLevel
    scope_id: str
    level: Level | None
    previous_level: Level | None
    value: float
    threshold: float | None
    occurrences: int
    observed_at: datetime


class TransitionPage(Contract):
    items: list[TransitionHistory] = Field(description="Newest first.")
    total: int
    limit: int
    offset: int
