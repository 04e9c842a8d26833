"""The rules engine's own roll-up topic (``rollup.v1``): window summaries on their way from the
partition that saw the readings to the partition that owns the grid, street, district or city
scope, and source marks that say how far each source partition's event time has got."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from schemas.alerts import ScopeLevel
from schemas.base import Code, Contract


class WindowPartial(Contract):
    """One source partition's summary of one closed window at one scope: mergeable, so the
    owner of the scope can finish any aggregation once every source has reported."""

    kind: Literal["partial"] = "partial"
    indicator: Code
    scope_level: ScopeLevel
    scope_id: Code
    district: Code | None = Field(description="For the emergency profile; null for the city.")
    window_start_ms: int
    source: str = Field(description="'topic:partition' the readings came from.")
    count: int = Field(ge=1)
    total: int = Field(description="Sum in micro-units: exact, so merges agree in any order.")
    low: float
    high: float
    first_ts: int
    first: float
    last_ts: int
    last: float

    @property
    def key(self) -> bytes:
        return f"{self.indicator}|{self.scope_level}|{self.scope_id}".encode()


class SourceMark(Contract):
    """Highest event time a source partition has seen; its windows up to that time minus an
    indicator's lateness are closed and their partials were sent before this mark."""

    kind: Literal["mark"] = "mark"
    topic: str
    partition: int = Field(ge=0)
    partitions: int = Field(ge=1, description="Partitions of the source topic.")
    max_ts_ms: int


RollupRecord = Annotated[WindowPartial | SourceMark, Field(discriminator="kind")]
ROLLUP_RECORD: TypeAdapter[WindowPartial | SourceMark] = TypeAdapter(RollupRecord)
