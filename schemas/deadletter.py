"""Dead letters: every rejected record with its source, raw payload and reason."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Contract, UtcDatetime

MAX_PAYLOAD_CHARS = 64 * 1024


class DeadLetter(Contract):
    """A record the platform refused, kept so it can be inspected and replayed."""

    source: str = Field(description="Where it came from, e.g. ingest.http.readings or rules.")
    reason: str
    payload: str = Field(description=f"Raw payload, cut to {MAX_PAYLOAD_CHARS} characters.")
    truncated: bool = False
    received_at: UtcDatetime
    topic: str | None = Field(default=None, description="Topic the record was consumed from.")
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def bounded_payload(cls, raw: str | bytes) -> tuple[str, bool]:
        """Raw payload as text, cut to the bound; says whether it was cut."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if len(text) > MAX_PAYLOAD_CHARS:
            return text[:MAX_PAYLOAD_CHARS], True
        return text, False
