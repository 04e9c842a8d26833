"""12345 citizen-hotline tickets (topic ``tickets.v1``)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from schemas.base import LINE_PATTERN, TEXT_PATTERN, Code, Contract, UtcDatetime
from schemas.readings import Location


class Caller(Contract):
    """Personal data of the citizen who called; masked for everyone who does not need it."""

    name: Annotated[str, Field(max_length=64, pattern=LINE_PATTERN)] | None = None
    phone: Annotated[str, Field(max_length=32, pattern=r"^[0-9+\- ]+$")] | None = None


class Channel(StrEnum):
    """How the ticket reached us."""

    OPEN311 = "open311"  # an Open311 client (apps, web forms, the hotline's own system)
    IMPORT = "import"  # a bulk export from an existing hotline system
    HOTLINE = "hotline"  # the 12345 hotline directly


class HotlineTicket(Contract):
    """A 12345 ticket as registered by the hotline (受理)."""

    ticket_id: uuid.UUID
    category: Code = Field(description="Service code of the 12345 category taxonomy.")
    description: Annotated[str, Field(min_length=1, max_length=4000, pattern=TEXT_PATTERN)]
    reported_at: UtcDatetime
    location: Location = Field(default_factory=Location)
    urgent: bool = False
    caller: Caller = Field(default_factory=Caller)
    address: Annotated[str, Field(max_length=256, pattern=LINE_PATTERN)] | None = None
    media_url: Annotated[str, Field(max_length=1024, pattern=r"^https?://\S+$")] | None = None
    channel: Channel = Channel.HOTLINE
    external_id: Annotated[str, Field(max_length=128, pattern=LINE_PATTERN)] | None = Field(
        default=None, description="The id the originating system gave it (imports)."
    )

    @property
    def key(self) -> bytes:
        """Partition key: ticket-derived indicators count per district."""
        return (self.location.district or "unknown").encode()
