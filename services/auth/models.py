"""API keys: who may call what (scopes), issued and revoked by administrators."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from schemas.base import LINE_PATTERN, Code, Contract


class Scope(StrEnum):
    """What a key lets its holder do."""

    READINGS_WRITE = "readings:write"  # devices and gateways sending readings
    TICKETS_WRITE = "tickets:write"  # hotline systems and Open311 clients filing tickets
    PII_READ = "pii:read"  # may see 12345 callers' names and phones unmasked
    ADMIN = "admin"  # keys, registries, dead-letter replays, definitions


class ApiKeyCreate(Contract):
    """What an administrator asks for when issuing a key."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=LINE_PATTERN)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope))]
    device_id: Code | None = Field(
        default=None, description="Bind the key to one device: it may send only its readings."
    )


class ApiKeyRead(Contract):
    """A key as listed: never its secret."""

    key_id: str
    name: str
    scopes: list[Scope]
    device_id: str | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None


class IssuedKey(ApiKeyRead):
    """A key just issued: the only time its full value is shown."""

    key: str = Field(description="The full key. Store it now: it cannot be shown again.")


class Principal(Contract):
    """Who is calling, as far as authorisation cares."""

    key_id: str
    name: str
    scopes: frozenset[Scope]
    device_id: str | None = None

    def allows(self, scope: Scope) -> bool:
        """Whether the caller holds ``scope`` (admin holds every scope)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes
