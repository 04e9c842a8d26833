"""Sensor readings: what a device measured, where and when.

A device or gateway sends readings one object each (``SensorReading``, the ingest API's and the
MQTT bridge's contract); on the readings topic (``readings.v2``) they travel as frames
(``ReadingFrame``): the readings ingest accepted from one post for one partition, column by
column, so a reader checks numbers and short codes in bulk rather than a document a reading."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, NotRequired, cast

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

from schemas.base import LINE_PATTERN, Code, Contract, Number, UtcDatetime, uuid5_bytes, uuid5_of

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

# A fixed namespace makes a reading id derived from its content reproducible everywhere.
_READING_NS = uuid.UUID("6f1d4c1e-2b8a-4b57-9a57-6e0d0c8f3a11")
_READING_NS_BYTES = _READING_NS.bytes


def derive_reading_id(device_id: str, metric: str, ts_iso: str) -> uuid.UUID:
    """Deterministic id for a reading that arrived without one: same content, same id."""
    return uuid5_of(_READING_NS_BYTES, f"{device_id}|{metric}|{ts_iso}".encode())


def reading_id_bytes(device_id: str, metric: str, us: int) -> bytes:
    """``derive_reading_id(...).bytes`` of an instant in microseconds since 1970 (UTC), for
    the writer, which derives one a reading: the instant written as ``isoformat`` writes it,
    from a text per second rather than a datetime per reading."""
    second, fraction = divmod(us, 1_000_000)
    stamp = _second_text(second) + (b".%06d+00:00" % fraction if fraction else b"+00:00")
    name = b"%s|%s|%s" % (device_id.encode(), metric.encode(), stamp)
    return uuid5_bytes(_READING_NS_BYTES, name)


@lru_cache(maxsize=4096)
def _second_text(second: int) -> bytes:
    return (EPOCH + timedelta(seconds=second)).isoformat()[:-6].encode()  # less "+00:00"


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


# The readings topic's record: a frame of readings, column by column.

# Readings in one frame at most (ingest sends at most FRAME_READINGS): a bound on a record.
MAX_FRAME = 100_000
FRAME_READINGS = 2_000

EpochMicros = Annotated[int, Field(strict=True)]


def micros(ts: datetime) -> int:
    """An aware instant as whole microseconds since the Unix epoch (exact, unlike a float)."""
    return (ts - EPOCH) // MICROSECOND


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@with_config(ConfigDict(extra="forbid", str_strip_whitespace=True, title="Places"))
class Places(TypedDict, total=False):
    """A frame's distinct locations, column by column: place ``j`` is ``lon[j]``,
    ``lat[j]``, ``grid[j]``, ``street[j]``, ``district[j]``; a column left out is null for
    every place. Checked column by column, a place costs a third of a location object."""

    lon: list[Annotated[Number, Field(ge=-180, le=180)] | None]
    lat: list[Annotated[Number, Field(ge=-90, le=90)] | None]
    grid: list[Code | None]
    street: list[Code | None]
    district: list[Code | None]


PLACE_KEYS = ("lon", "lat", "grid", "street", "district")


@with_config(ConfigDict(extra="forbid", str_strip_whitespace=True, title="ReadingFrame"))
class ReadingFrame(TypedDict):
    """Readings on the readings topic, column by column: the i-th reading is ``device_id[i]``,
    ``metric[i]``, ``value[i]`` ``unit[i]`` at ``ts[i]``, standing at place ``place[i]`` of
    ``places`` (nowhere known when null). Every column has one item a reading. Units are
    canonical and readings are in the partition of their device (ingest sees to both);
    ``reading_id`` is there when a client chose ids (null for the others, whose id is derived
    from device, metric and time as ``SensorReading`` derives it)."""

    device_id: Annotated[list[Code], Field(min_length=1, max_length=MAX_FRAME)]
    metric: Annotated[list[Code], Field(min_length=1, max_length=MAX_FRAME)]
    unit: Annotated[list[Unit], Field(min_length=1, max_length=MAX_FRAME)]
    ts: Annotated[
        list[EpochMicros],
        Field(min_length=1, max_length=MAX_FRAME, description="Microseconds since 1970, UTC."),
    ]
    value: Annotated[list[Number], Field(min_length=1, max_length=MAX_FRAME)]
    place: Annotated[list[Annotated[int, Field(strict=True, ge=0)] | None], Field(min_length=1)]
    places: Places
    reading_id: NotRequired[list[uuid.UUID | None]]


READING_FRAME: TypeAdapter[ReadingFrame] = TypeAdapter(ReadingFrame)
_COLUMNS = ("device_id", "metric", "unit", "ts", "value", "place")


class FrameError(ValueError):
    """A frame whose columns pass one by one but do not fit together."""


def read_frame(raw: bytes) -> ReadingFrame:
    """A record of the readings topic checked against the contract: raises pydantic's
    ValidationError, or FrameError when its columns do not line up."""
    frame = READING_FRAME.validate_json(raw)
    n = len(frame["ts"])
    for name in _COLUMNS:
        if len(frame[name]) != n:  # type: ignore[literal-required]
            raise FrameError(f"{name}: {len(frame[name])} items for {n} readings")  # type: ignore[literal-required]
    ids = frame.get("reading_id")
    if ids is not None and len(ids) != n:
        raise FrameError(f"reading_id: {len(ids)} items for {n} readings")
    sizes = {len(column) for column in frame["places"].values()}  # type: ignore[arg-type]
    if len(sizes) > 1:
        raise FrameError(f"places: columns of {' and '.join(map(str, sorted(sizes)))} places")
    count = sizes.pop() if sizes else 0
    top = max((p for p in frame["place"] if p is not None), default=-1)
    if top >= count:
        raise FrameError(f"place: {top} is past the {count} places")
    return frame


def place_list(frame: ReadingFrame) -> list[LocationRecord]:
    """A checked frame's places as location records (the columns it states; null where a
    place has no value in one)."""
    places = frame["places"]
    keys = [k for k in PLACE_KEYS if k in places]
    if not keys:
        return []
    columns = [places[k] for k in keys]  # type: ignore[literal-required]
    rows = zip(*columns, strict=True)  # read_frame checked they are as long
    return [cast(LocationRecord, dict(zip(keys, values, strict=True))) for values in rows]


def frame_readings(frame: ReadingFrame) -> list[dict[str, Any]]:
    """A frame's readings as ``SensorReading`` objects' plain data (time as RFC 3339 text)."""
    places, ids = place_list(frame), frame.get("reading_id")
    out = []
    for i, (device, metric, unit, us, value, place) in enumerate(
        zip(*(frame[c] for c in _COLUMNS), strict=True)  # type: ignore[literal-required]
    ):
        reading: dict[str, Any] = {
            "device_id": device,
            "metric": metric,
            "value": value,
            "unit": unit,
            "ts": from_micros(us).isoformat().replace("+00:00", "Z"),
        }
        if place is not None:
            reading["location"] = dict(places[place])
        if ids is not None and ids[i] is not None:
            reading["reading_id"] = str(ids[i])
        out.append(reading)
    return out


def encode_frame(
    device_id: Sequence[str],
    metric: Sequence[str],
    unit: Sequence[str],
    ts: Sequence[int],
    value: Sequence[float],
    location: Sequence[LocationRecord | None],
    reading_id: Sequence[str | None] | None = None,
) -> bytes:
    """A frame's record from its readings' columns (locations given per reading, written once
    each)."""
    index: dict[tuple[Any, ...], int] = {}
    # Readings that share a location object (ingest's, from a frame's places) are placed by
    # its identity: spelling it out as a key cost ~0.3 us a reading.
    known: dict[int, int] = {}
    places: list[LocationRecord] = []
    place: list[int | None] = []
    for where in location:
        if not where:
            place.append(None)
            continue
        at = known.get(id(where))
        if at is None:
            key = tuple(where.items())
            at = index.get(key)
            if at is None:
                # A location stating nothing is none.
                at = index[key] = -1 if all(v is None for v in where.values()) else len(places)
                if at >= 0:
                    places.append(where)
            known[id(where)] = at
        place.append(None if at < 0 else at)
    keys = [k for k in PLACE_KEYS if any(p.get(k) is not None for p in places)]
    frame: dict[str, Any] = {
        "device_id": device_id,
        "metric": metric,
        "unit": unit,
        "ts": ts,
        "value": value,
        "place": place,
        "places": {k: [p.get(k) for p in places] for k in keys},
    }
    if reading_id is not None and any(r is not None for r in reading_id):
        frame["reading_id"] = reading_id
    return orjson.dumps(frame)
