"""Pure batch handling: raw bodies in, normalised readings and per-item reasons out."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import orjson
from pydantic import ValidationError

from ingest import units
from schemas.base import describe_errors
from schemas.readings import READING_RECORD, ReadingRecord, record_reading_id_text


class MalformedBatch(ValueError):
    """The body as a whole cannot be read as a batch of readings."""


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: str
    item: Any


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid reading, normalised: id filled in, time in UTC, ready for the readings topic."""

    reading_id: str  # canonical UUID text
    device_id: str
    record: dict[str, Any]

    @property
    def key(self) -> bytes:
        """Partition key: one device stays on one partition (as SensorReading.key)."""
        return self.device_id.encode()

    def encode(self) -> bytes:
        return orjson.dumps(self.record, option=orjson.OPT_UTC_Z)


@dataclass(slots=True)
class Sorted:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_body(body: bytes, *, max_items: int) -> list[Any]:
    """The items of a JSON batch body: an array, or an object with a ``readings`` array."""
    if not body.strip():
        raise MalformedBatch("empty body: expected a JSON array of readings")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBatch(f"body is not valid JSON: {exc}") from exc
    if isinstance(document, dict):
        if set(document) != {"readings"}:
            raise MalformedBatch('expected a JSON array, or an object with only a "readings" key')
        document = document["readings"]
    if not isinstance(document, list):
        raise MalformedBatch(f"expected a JSON array of readings, got {type(document).__name__}")
    return _bounded(document, max_items)


class Unreadable:
    """An NDJSON line that is not JSON: kept as an item so it is refused on its own."""

    __slots__ = ("line", "reason")

    def __init__(self, line: bytes, reason: str) -> None:
        self.line = line
        self.reason = reason


def parse_ndjson(body: bytes, *, max_items: int) -> list[Any]:
    """The items of an NDJSON body, one reading per line; blank lines are skipped and a line
    that is not JSON becomes an item refused with its reason, not a refused batch."""
    items: list[Any] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            items.append(Unreadable(line, f"line is not valid JSON: {exc}"))
    if not items:
        raise MalformedBatch("empty body: expected one JSON reading per line")
    return _bounded(items, max_items)


def _bounded(items: list[Any], max_items: int) -> list[Any]:
    if not items:
        raise MalformedBatch("the batch holds no readings")
    if len(items) > max_items:
        raise MalformedBatch(f"batch of {len(items)} readings exceeds the limit of {max_items}")
    return items


def normalise(record: ReadingRecord) -> Accepted:
    """The reading as it goes on the topic: with its id, its time in UTC."""
    reading_id = record_reading_id_text(record)
    out: dict[str, Any] = {**record, "reading_id": reading_id, "ts": record["ts"].astimezone(UTC)}
    return Accepted(reading_id=reading_id, device_id=record["device_id"], record=out)


def latest_allowed(max_future_seconds: float | None, now: datetime) -> datetime | None:
    """The latest time stamp a reading may carry when it arrives at ``now``."""
    return None if max_future_seconds is None else now + timedelta(seconds=max_future_seconds)


def sort_items(
    items: list[Any], *, only_device: str | None = None, not_after: datetime | None = None
) -> Sorted:
    """Validate each item on its own, so one bad reading does not sink the batch.
    ``only_device``: the caller's key is bound to that device and may send nothing else.
    ``not_after``: readings stamped later than this are refused (a clock running ahead)."""
    out = Sorted()
    validate = READING_RECORD.validate_python
    for index, item in enumerate(items):
        if isinstance(item, Unreadable):
            out.rejected.append(Rejection(index, item.reason, item.line.decode(errors="replace")))
            continue
        if not isinstance(item, dict):
            out.rejected.append(
                Rejection(index, f"expected an object, got {type(item).__name__}", item)
            )
            continue
        try:
            record = validate(item)
        except ValidationError as exc:
            out.rejected.append(Rejection(index, describe_errors(exc), item))
            continue
        if only_device is not None and record["device_id"] != only_device:
            reason = f"device_id: this key may only send readings of device {only_device!r}"
            out.rejected.append(Rejection(index, reason, item))
            continue
        if not_after is not None and record["ts"] > not_after:
            reason = (
                f"ts: {record['ts'].isoformat()} is ahead of the server's clock by more than "
                "the allowed skew; check the device's clock"
            )
            out.rejected.append(Rejection(index, reason, item))
            continue
        try:
            record["unit"], record["value"] = units.normalise(
                record["metric"], record["unit"], record["value"]
            )
        except units.UnitError as exc:
            out.rejected.append(Rejection(index, str(exc), item))
            continue
        out.accepted.append(normalise(record))
    return out


class RecentIds:
    """Ids of readings recently handed to the broker, so a retried batch is not sent twice.

    Bounded: the oldest ids are forgotten past ``capacity``. Ids are claimed before the
    hand-off and settled after it: a concurrent request carrying the same ids sees them as
    taken, and a failed hand-off releases them for the client's retry.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._done: dict[Hashable, None] = {}
        self._pending: set[Hashable] = set()

    def claim(self, ids: Sequence[Hashable]) -> list[bool]:
        """For each id, whether it is new (and now claimed by the caller)."""
        fresh = []
        for key in ids:
            new = key not in self._done and key not in self._pending
            if new:
                self._pending.add(key)
            fresh.append(new)
        return fresh

    def settle(self, ids: Sequence[Hashable], *, delivered: bool) -> None:
        """The claimed ids were delivered (remember them) or not (release them)."""
        for key in ids:
            self._pending.discard(key)
            if delivered:
                self._done[key] = None
        overflow = len(self._done) - self.capacity
        if overflow > 0:
            for key in list(islice(self._done, overflow)):
                del self._done[key]

    def __len__(self) -> int:
        return len(self._done)
