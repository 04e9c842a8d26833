"""Indicator values: an indicator's aggregate over one event-time window at one scope
(topic ``indicator-values.v1``). The rules engine emits them; the writer stores them."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from schemas.alerts import Level, ScopeLevel
from schemas.base import Code, Contract, Number, UtcDatetime, uuid5_hex

_VALUE_NS = uuid.UUID("9b0f3c52-6d7e-4e8a-a1c4-3e5d2f7b8a90").bytes


def value_id_for(
    indicator: str, scope_level: ScopeLevel, scope_id: str, window_start: datetime
) -> uuid.UUID:
    """Deterministic id: one value per indicator, scope and window, however often replayed."""
    return uuid.UUID(value_id_hex(indicator, scope_level, scope_id, window_start.isoformat()))


def value_id_hex(indicator: str, scope_level: ScopeLevel, scope_id: str, start_iso: str) -> str:
    """``value_id_for`` as 32 hex digits: ``uuid.uuid5`` without building the UUID object,
    which the model's validator builds for a third of the cost (the engine makes one per
    closed window)."""
    return value_id_hex_of(f"{indicator}|{scope_level.value}|{scope_id}|{start_iso}")


def value_id_hex_of(name: str) -> str:
    """``value_id_hex`` of its name, ``indicator|scope level|scope id|window start``."""
    return uuid5_hex(_VALUE_NS, name)


class IndicatorValue(Contract):
    """The value of one indicator at one scope over one window [window_start, window_end)."""

    value_id: uuid.UUID = Field(description="From indicator, scope and window start.")
    indicator: Code
    scope_level: ScopeLevel
    scope_id: Code
    window_start: UtcDatetime
    window_end: UtcDatetime
    value: Number = Field(description="The indicator's aggregation over the window.")
    samples: int = Field(ge=0, description="Readings or tickets aggregated into the value.")
    level: Level | None = Field(
        default=None, description="Warning level the value reaches, null when normal."
    )

    @property
    def key(self) -> bytes:
        """Partition key: one indicator scope stays in order on one partition."""
        return f"{self.indicator}|{self.scope_level}|{self.scope_id}".encode()
