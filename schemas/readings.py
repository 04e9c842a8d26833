"""Sensor readings: what a device measured, where and when (topic ``readings.v1``)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, NotRequired

import orjson
from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    TypeAdapter,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from schemas.base import LINE_PATTERN, Code, Contract, Number, UtcDatetime

# A fixed namespace makes a reading id derived from its content reproducible everywhere.
_READING_NS = uuid.UUID("6f1d4c1e-2b8a-4b57-9a57-6e0d0c8f3a11")
_READING_NS_BYTES = _READING_NS.bytes


def derive_reading_id(device_id: str, metric: str, ts_iso: str) -> uuid.UUID:
    """Deterministic id for a reading that arrived without one: same content, same id."""
    return uuid.UUID(reading_id_text(device_id, metric, ts_iso))


def reading_id_text(device_id: str, metric: str, ts_iso: str) -> str:
    """``derive_reading_id`` as text."""
    return _uuid5_text(f"{device_id}|{metric}|{ts_iso}".encode())


def reading_id_at(device_id: str, metric: str, ts: datetime) -> str:
    """``reading_id_text`` of a UTC instant, for the hot paths that derive one per reading.
    orjson writes a UTC datetime exactly as ``isoformat`` does (tests/unit/test_schemas.py
    holds it to that), seven times cheaper."""
    return _uuid5_text(b"%s|%s|%s" % (device_id.encode(), metric.encode(), orjson.dumps(ts)[1:-1]))


def _uuid5_text(name: bytes) -> str:
    """``str(uuid.uuid5(_READING_NS, name))`` (SHA-1 over namespace and name, version 5,
    RFC 4122 variant) written straight from the hex digest, without UUID objects or byte
    twiddling, which cost more than validating the reading."""
    h = hashlib.sha1(_READING_NS_BYTES + name).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


# The hex digit that holds the RFC 4122 variant: its two high bits become 10.
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


Unit = Annotated[str, Field(min_length=1, max_length=16, pattern=LINE_PATTERN)]


class Location(Contract):
    """Where a device stands: coordinates and the city's grid → street → district hierarchy."""

    lon: Number | None = Field(default=None, ge=-180, le=180)
    lat: Number | None = Field(default=None, ge=-90, le=90)
    grid: Code | None = None
    street: Code | None = None
    district: Code | None = None


class SensorReading(Contract):
    """One measurement of one metric by one device at one instant (event time)."""

    reading_id: uuid.UUID | None = Field(
        default=None,
        description="Client-chosen id; derived from device, metric and time when absent, "
        "so a retried batch carries the same ids.",
    )
    device_id: Code
    metric: Code = Field(description="What is measured, e.g. waterlogging_depth (积水深度).")
    value: Number
    unit: Unit
    ts: UtcDatetime = Field(description="When the device measured it (event time, with zone).")
    location: Location = Field(default_factory=Location)

    @model_validator(mode="after")
    def _fill_reading_id(self) -> SensorReading:
        if self.reading_id is None:
            # Frozen model: set once during validation, never mutated after.
            object.__setattr__(
                self,
                "reading_id",
                derive_reading_id(self.device_id, self.metric, self.ts.isoformat()),
            )
        return self

    @property
    def key(self) -> bytes:
        """Partition key: every indicator scoped to this device lands on one partition."""
        return self.device_id.encode()


# The same contract as plain data, checked entirely inside pydantic-core: about three times
# faster than building SensorReading objects (no Python validators run), for the hot paths that
# only need the values (the storage writer). tests/unit/test_schemas.py holds the two to the
# same verdicts and values.


@with_config(ConfigDict(extra="forbid", str_strip_whitespace=True))
class LocationRecord(TypedDict, total=False):
    lon: Annotated[Number, Field(ge=-180, le=180)] | None
    lat: Annotated[Number, Field(ge=-90, le=90)] | None
    grid: Code | None
    street: Code | None
    district: Code | None


@with_config(ConfigDict(extra="forbid", str_strip_whitespace=True))
class ReadingRecord(TypedDict):
    reading_id: NotRequired[uuid.UUID | None]
    device_id: Code
    metric: Code
    value: Number
    unit: Unit
    # A string with a zone, never a bare number (as UtcDatetime; left in its own zone here).
    # Strict, so pydantic-core refuses numbers itself: records are read from JSON only
    # (``validate_json``), where a strict datetime is RFC 3339 text and nothing else.
    ts: Annotated[AwareDatetime, Field(strict=True)]
    location: NotRequired[LocationRecord]


READING_RECORD: TypeAdapter[ReadingRecord] = TypeAdapter(ReadingRecord)
# A whole batch body at once (ingest's fast path): one pass of pydantic-core over the bytes.
READING_RECORDS: TypeAdapter[list[ReadingRecord]] = TypeAdapter(list[ReadingRecord])


def record_reading_id(record: ReadingRecord) -> uuid.UUID:
    """The record's id, derived exactly as SensorReading derives it when absent."""
    given = record.get("reading_id")
    if given is not None:
        return given
    ts = record["ts"].astimezone(UTC)
    return uuid.UUID(reading_id_at(record["device_id"], record["metric"], ts))
