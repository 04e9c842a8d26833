"""Dead letters as operators see them, and what a replay did."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.base import Contract


class LetterRead(Contract):
    letter_id: int
    source: str
    reason: str
    payload: str
    truncated: bool
    received_at: datetime
    topic: str | None
    partition: int | None
    offset: int | None
    replayed_at: datetime | None
    replayed_by: str | None
    replay_outcome: str | None


class LetterPage(Contract):
    items: list[LetterRead] = Field(description="Newest first.")
    total: int
    limit: int
    offset: int


class ReplayRequest(Contract):
    letter_ids: list[int] = Field(min_length=1, max_length=1000)


class ReplayOutcome(Contract):
    letter_id: int
    replayed: bool = Field(description="Something of it was accepted (or had been already).")
    outcome: str


class ReplayResult(Contract):
    items: list[ReplayOutcome]
