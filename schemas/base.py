"""The one base configuration every contract shares."""

from __future__ import annotations

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
