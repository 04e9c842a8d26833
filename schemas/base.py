"""The one base configuration every contract shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, ValidationError


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Contracts carry timezone-aware instants only; naive datetimes are refused at the boundary
# (a sensor clock without a zone is a data error, not something to guess about).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class Contract(BaseModel):
    """Immutable, strict-about-unknown-fields base for topic records and API bodies."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


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
