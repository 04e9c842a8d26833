"""The one base configuration every contract shares."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def no_bare_numbers(value: object) -> object:
    if isinstance(value, int | float):
        raise ValueError("expected an ISO 8601 date-time with a zone, not a number")
    return value


# Contracts carry timezone-aware instants only: naive datetimes and bare epoch numbers are
# refused at the boundary (a clock without a zone, or a number of unknown unit, is a data
# error, not something to guess about).
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(no_bare_numbers), AfterValidator(_to_utc)]


# Ids are printable codes from the city's registries: no spaces, no separators we use in keys.
CODE_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=CODE_PATTERN)]

# Text on one line without control characters (units, names). PostgreSQL cannot store NUL,
# so no contract lets one through to become a record the writer could never store.
LINE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
# Free text (descriptions): line breaks and tabs allowed, NUL and other controls not.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$"

# A finite number, never a string or a boolean coerced into one.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Contract(BaseModel):
    """Immutable, strict-about-unknown-fields base for topic records and API bodies."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5 = (0x5000 << 64) | (0x8000 << 48)  # version 5, RFC 4122 variant


def _uuid5_int(namespace: bytes, name: bytes) -> int:
    digest = hashlib.sha1(namespace + name).digest()
    return int.from_bytes(digest[:16]) & _VERSION_MASK | _VERSION_5


def uuid5_hex(namespace: bytes, name: str) -> str:
    """``uuid.uuid5(UUID(bytes=namespace), name).hex`` without the UUID objects: the rules
    engine derives one id per record it emits, and the objects cost it a third of that."""
    return f"{_uuid5_int(namespace, name.encode()):032x}"


def uuid5_bytes(namespace: bytes, name: bytes) -> bytes:
    """``uuid.uuid5(UUID(bytes=namespace), name).bytes``, for the writer's COPY: a UUID
    object costs as much again as the hash."""
    return _uuid5_int(namespace, name).to_bytes(16)


def uuid5_of(namespace: bytes, name: bytes) -> uuid.UUID:
    """``uuid.uuid5(UUID(bytes=namespace), name)`` from the digest's integer: uuid5's own
    byte handling costs as much as the hash."""
    return uuid.UUID(int=_uuid5_int(namespace, name))


def uuid_text(hex32: str) -> str:
    """32 hex digits as a UUID's canonical text."""
    h = hex32
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utcnow() -> datetime:
    """Current instant in UTC."""
    return datetime.now(UTC)


def describe_errors(exc: ValidationError) -> str:
    """A one-line, field-by-field account of why input was refused."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
