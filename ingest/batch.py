"""Pure batch handling: raw bodies in, normalised readings and per-item reasons out."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple, cast, overload

import orjson
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from ingest import units
from schemas.base import describe_errors
from schemas.readings import (
    FRAME_READINGS,
    PLACE_KEYS,
    READING_RECORD,
    READING_RECORDS,
    FrameError,
    LocationRecord,
    ReadingFrame,
    ReadingRecord,
    encode_frame,
    from_micros,
    micros,
    place_list,
    read_frame,
)


class MalformedBatch(ValueError):
    """The body as a whole cannot be read as a batch of readings."""


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: str
    item: Any


class Accepted(NamedTuple):
    """A valid reading, normalised (unit canonical, time in UTC) as it goes into a frame on the
    readings topic. A named tuple: one is made per reading on the ingest hot path, where
    building a frozen dataclass cost more than the checks."""

    ident: Hashable  # what a retry repeats: the client's id, else (device, metric, ts)
    device_id: str
    metric: str
    unit: str
    ts: int  # microseconds since 1970, UTC
    value: float
    location: LocationRecord | None
    reading_id: str | None  # the id the client chose (canonical text), if it chose one
    position: int  # its place in the submitted batch, for a later refusal (the registry's)

    @property
    def placed(self) -> bool:
        """The reading states all of where it stands (every one of PLACE_KEYS): it needs
        nothing from the registry."""
        place = self.location
        return place is not None and len(place) == len(PLACE_KEYS) and None not in place.values()

    @property
    def record(self) -> dict[str, Any]:
        """The reading as ``SensorReading``'s plain data (what a dead letter keeps of it)."""
        record: dict[str, Any] = {
            "device_id": self.device_id,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "ts": from_micros(self.ts).isoformat().replace("+00:00", "Z"),
        }
        if self.location is not None:
            record["location"] = dict(self.location)
        if self.reading_id is not None:
            record["reading_id"] = self.reading_id
        return record


def frames(readings: Sequence[Accepted], size: int = FRAME_READINGS) -> list[bytes]:
    """Readings (of one partition) as the readings topic's records, ``size`` a frame at most."""
    out = []
    for start in range(0, len(readings), size):
        _, device, metric, unit, ts, value, location, ids, _ = zip(
            *readings[start : start + size], strict=True
        )
        out.append(encode_frame(device, metric, unit, ts, value, location, ids))
    return out


class Columns(Sequence[Accepted]):
    """Accepted readings kept as the columns of the frame they came in (a frame whose
    readings all passed): a sequence of ``Accepted`` to whoever reads it reading by reading,
    while ingest's hot path checks, de-duplicates and re-frames them column by column.
    Building an ``Accepted`` a reading and transposing them back into frames was ~1.5 us of
    ingest's ~3.3 us a reading on the simulated city's frames."""

    __slots__ = ("_rows", "device_id", "metric", "place", "places", "reading_id", "ts", "unit",
                 "value")  # fmt: skip

    def __init__(
        self,
        device_id: list[str],
        metric: list[str],
        unit: list[str],
        ts: list[int],
        value: list[float],
        place: list[int | None],
        places: dict[str, list[Any]],
        reading_id: list[Any] | None = None,
    ) -> None:
        """Columns as ``read_frame`` checked them: ``place[i]`` indexes the ``places``
        columns. A place stating nothing is none (as ``encode_frame`` writes it)."""
        if any(None in column for column in places.values()):
            rows = zip(*places.values(), strict=True)
            stated = [any(v is not None for v in row) for row in rows]
            if not all(stated):
                place = [None if p is None or not stated[p] else p for p in place]
        if reading_id is not None and all(r is None for r in reading_id):
            reading_id = None
        self.device_id, self.metric, self.unit, self.ts, self.value = (
            device_id, metric, unit, ts, value,
        )  # fmt: skip
        self.place, self.places, self.reading_id = place, places, reading_id
        self._rows: list[Accepted] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    @overload
    def __getitem__(self, index: int) -> Accepted: ...
    @overload
    def __getitem__(self, index: slice) -> list[Accepted]: ...
    def __getitem__(self, index: int | slice) -> Accepted | list[Accepted]:
        return self.rows()[index]

    def __iter__(self) -> Iterator[Accepted]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return self.rows() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Columns({len(self)} readings)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Columns, (self.device_id, self.metric, self.unit, self.ts, self.value,
                          self.place, self.places, self.reading_id))  # fmt: skip

    def rows(self) -> list[Accepted]:
        """The readings one by one (made once, on first use)."""
        if self._rows is None:
            located = place_list(cast(ReadingFrame, {"places": self.places}))
            where = [None if p is None else located[p] for p in self.place]
            rids = (
                [None] * len(self)
                if self.reading_id is None
                else [None if r is None else str(r) for r in self.reading_id]
            )
            self._rows = [
                _accepted(((d, m, t) if rid is None else rid, d, m, u, t, v, w, rid, i))
                for i, (d, m, u, t, v, w, rid) in enumerate(
                    zip(
                        self.device_id,
                        self.metric,
                        self.unit,
                        self.ts,
                        self.value,
                        where,
                        rids,
                        strict=True,
                    )
                )
            ]
        return self._rows

    def idents(self) -> list[Hashable]:
        """Each reading's ``Accepted.ident``."""
        keys = zip(self.device_id, self.metric, self.ts, strict=True)
        if self.reading_id is None:
            return list(keys)
        return [k if r is None else str(r) for k, r in zip(keys, self.reading_id, strict=True)]

    def placed(self) -> bool:
        """Every reading states all of where it stands (``Accepted.placed`` of each)."""
        places = self.places
        return None not in self.place and all(
            k in places and None not in places[k] for k in PLACE_KEYS
        )

    def take(self, indexes: Sequence[int]) -> Columns:
        """The readings at ``indexes``, in that order (for a partition's share)."""

        def pick(column: Sequence[Any]) -> list[Any]:
            return [column[i] for i in indexes]

        ids = None if self.reading_id is None else pick(self.reading_id)
        return Columns(pick(self.device_id), pick(self.metric), pick(self.unit), pick(self.ts),
                       pick(self.value), pick(self.place), self.places, ids)  # fmt: skip

    def frames(self, size: int = FRAME_READINGS) -> list[bytes]:
        """The readings as the readings topic's records, ``size`` a frame at most (as
        ``frames`` encodes them, without making a reading at a time)."""
        out = []
        for start in range(0, len(self), size):
            end = start + size
            index: dict[int, int] = {}
            place = [None if p is None else index.setdefault(p, len(index))
                     for p in self.place[start:end]]  # fmt: skip
            places = {k: [column[i] for i in index] for k, column in self.places.items()}
            frame: dict[str, Any] = {
                "device_id": self.device_id[start:end],
                "metric": self.metric[start:end],
                "unit": self.unit[start:end],
                "ts": self.ts[start:end],
                "value": self.value[start:end],
                "place": place,
                "places": {k: v for k, v in places.items() if any(x is not None for x in v)},
            }
            if self.reading_id is not None:
                frame["reading_id"] = self.reading_id[start:end]
            out.append(orjson.dumps(frame))
        return out


@dataclass(slots=True)
class Sorted:
    accepted: list[Accepted] | Columns = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by columns: sorting runs in a worker process (ingest/sorting.py), and a
        list a field crosses the pipe several times faster than thousands of named tuples."""
        if isinstance(self.accepted, Columns):
            return (Sorted, (self.accepted, self.rejected))
        return (_sorted_from_columns, (tuple(zip(*self.accepted, strict=True)), self.rejected))


_accepted = partial(tuple.__new__, Accepted)  # Accepted._make without its Python-level checks


def _sorted_from_columns(columns: tuple[tuple[Any, ...], ...], rejected: list[Rejection]) -> Sorted:
    return Sorted(list(map(_accepted, zip(*columns, strict=True))), rejected)


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


def latest_allowed(max_future_seconds: float | None, now: datetime) -> datetime | None:
    """The latest time stamp a reading may carry when it arrives at ``now``."""
    return None if max_future_seconds is None else now + timedelta(seconds=max_future_seconds)


@with_config(ConfigDict(extra="forbid"))
class ReadingsEnvelope(TypedDict):
    readings: list[ReadingRecord]


READINGS_ENVELOPE: TypeAdapter[ReadingsEnvelope] = TypeAdapter(ReadingsEnvelope)


def read_records(body: bytes, *, ndjson: bool, max_items: int) -> list[ReadingRecord] | None:
    """Every reading of a body validated straight from its bytes by pydantic-core, or None
    when the body or any one of its items is not valid: the caller then reads it item by item
    to say what is wrong with which. The fast path of a well-formed batch, about three times
    cheaper than decoding it and validating each decoded item."""
    try:
        if ndjson:
            validate = READING_RECORD.validate_json
            records = [validate(line) for line in body.splitlines() if line.strip()]
        else:
            start = body.lstrip()[:1]
            if start == b"[":
                records = READING_RECORDS.validate_json(body)
            elif start == b"{":
                records = READINGS_ENVELOPE.validate_json(body)["readings"]
            else:
                return None
    except ValidationError:
        return None
    return records if 0 < len(records) <= max_items else None


def sort_body(
    body: bytes,
    *,
    ndjson: bool,
    max_items: int,
    frame: bool = False,
    only_device: str | None = None,
    not_after: datetime | None = None,
) -> Sorted:
    """A raw body (a JSON batch, NDJSON, or a frame) sorted into accepted and refused
    readings; raises MalformedBatch when it is not a batch of readings at all."""
    if frame:
        return sort_frame(body, max_items=max_items, only_device=only_device, not_after=not_after)
    records = read_records(body, ndjson=ndjson, max_items=max_items)
    if records is not None:
        result = sort_items(records, checked=True, only_device=only_device, not_after=not_after)
        if not result.rejected:
            return result
        # A refused item's dead letter keeps what the client sent, not the validated record:
        # read the body item by item (refusals past validation are rare).
    items = (parse_ndjson if ndjson else parse_body)(body, max_items=max_items)
    return sort_items(items, only_device=only_device, not_after=not_after)


# A body in the readings topic's own form: a gateway's many readings column by column.
FRAME_TYPE = "application/vnd.city-vitals.frame+json"


def sort_frame(
    body: bytes,
    *,
    max_items: int,
    only_device: str | None = None,
    not_after: datetime | None = None,
) -> Sorted:
    """A frame body (``ReadingFrame``) sorted like a batch, reading ``i`` its item ``i``: in
    one pass when every reading passes (checked in bulk by pydantic-core), otherwise reading by
    reading, so each refusal says which and why."""
    result = sort_frame_at_once(
        body, max_items=max_items, only_device=only_device, not_after=not_after
    )
    if result is not None:
        return result
    return sort_items(frame_items(body, max_items), only_device=only_device, not_after=not_after)


def sort_frame_at_once(
    body: bytes,
    *,
    max_items: int,
    only_device: str | None = None,
    not_after: datetime | None = None,
) -> Sorted | None:
    """A frame body's readings, all accepted, checked in bulk; None when the body is no frame,
    holds too many readings, or has one to refuse (``sort_frame`` then says which and why)."""
    try:
        checked = read_frame(body)
    except (ValidationError, FrameError):
        return None
    if len(checked["ts"]) > max_items:
        return None
    return _sort_frame(checked, only_device, not_after)


def _sort_frame(
    frame: ReadingFrame, only_device: str | None, not_after: datetime | None
) -> Sorted | None:
    """A checked frame's readings, all accepted; None if any must be refused."""
    devices, metrics, unit_of, stamps, values = (
        frame["device_id"], frame["metric"], frame["unit"], frame["ts"], frame["value"],
    )  # fmt: skip
    if only_device is not None and any(d != only_device for d in devices):
        return None
    if not_after is not None and max(stamps) > micros(not_after):
        return None
    canonical = units.CANONICAL
    if any(canonical.get(m, u) != u for m, u in set(zip(metrics, unit_of, strict=True))):
        for i, (metric, unit) in enumerate(zip(metrics, unit_of, strict=True)):
            if canonical.get(metric, unit) != unit:
                try:
                    unit_of[i], values[i] = units.normalise(metric, unit, values[i])
                except units.UnitError:
                    return None
    columns = Columns(
        devices, metrics, unit_of, stamps, values, frame["place"],
        cast(dict[str, list[Any]], frame["places"]), frame.get("reading_id"),
    )  # fmt: skip
    return Sorted(columns)


def frame_items(body: bytes, max_items: int) -> list[Any]:
    """A frame body's readings as items of a batch (times as RFC 3339 text, places inlined),
    for a frame with a bad reading; raises MalformedBatch when the body is no frame at all."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBatch(f"body is not valid JSON: {exc}") from exc
    columns = ("device_id", "metric", "unit", "ts", "value")
    if not isinstance(document, dict) or not all(
        isinstance(document.get(c), list) for c in columns
    ):
        raise MalformedBatch(
            "expected a frame: an object with the arrays " + ", ".join(columns) + " (and place, "
            "places, reading_id as it needs)"
        )
    n = len(document["ts"])
    optional = {c: document.get(c) for c in ("place", "reading_id")}
    if any(len(document[c]) != n for c in columns) or any(
        v is not None and (not isinstance(v, list) or len(v) != n) for v in optional.values()
    ):
        raise MalformedBatch(f"the frame's columns do not all hold {n} readings")
    extra = set(document) - {*columns, "place", "places", "reading_id"}
    if extra:
        raise MalformedBatch(f"unknown frame fields: {', '.join(sorted(extra))}")
    columns_of_places = document.get("places")
    if not isinstance(columns_of_places, dict) or not all(
        isinstance(c, list) for c in columns_of_places.values()
    ):
        columns_of_places = {}
    places = [
        {k: v for k, v in zip(columns_of_places, values, strict=False) if v is not None}
        for values in zip(*columns_of_places.values(), strict=False)
    ]
    _bounded(document["ts"], max_items)  # before building thousands of items to refuse
    place_of, ids = optional["place"] or [None] * n, optional["reading_id"]
    items = []
    for i in range(n):
        item: dict[str, Any] = {c: document[c][i] for c in ("device_id", "metric", "unit", "value")}
        us = document["ts"][i]
        item["ts"] = (
            from_micros(us).isoformat()
            if type(us) is int and _MIN_US <= us <= _MAX_US
            else us  # refused as it is
        )
        place = place_of[i]
        if place is not None:
            item["location"] = (
                places[place]
                if type(place) is int and 0 <= place < len(places)
                else {"place": place}  # refused: no such place
            )
        if ids is not None and ids[i] is not None:
            item["reading_id"] = ids[i]
        items.append(item)
    return items


_MIN_US, _MAX_US = (
    micros(datetime.min.replace(tzinfo=UTC)),
    micros(datetime.max.replace(tzinfo=UTC)),
)


def _check(index: int, item: Any) -> ReadingRecord | Rejection:
    """One decoded item validated as a reading, or refused with the reason."""
    if isinstance(item, Unreadable):
        return Rejection(index, item.reason, item.line.decode(errors="replace"))
    if not isinstance(item, dict):
        return Rejection(index, f"expected an object, got {type(item).__name__}", item)
    try:
        # As JSON, like every other reader of readings: READING_RECORD is strict about time.
        return READING_RECORD.validate_json(orjson.dumps(item))
    except orjson.JSONEncodeError as exc:
        return Rejection(index, f"item is not JSON: {exc}", repr(item))
    except ValidationError as exc:
        return Rejection(index, describe_errors(exc), item)


def sort_items(
    items: Sequence[Any],
    *,
    checked: bool = False,
    only_device: str | None = None,
    not_after: datetime | None = None,
) -> Sorted:
    """Validate each item on its own, so one bad reading does not sink the batch.
    ``checked``: the items are records READING_RECORD already validated (``read_records``).
    ``only_device``: the caller's key is bound to that device and may send nothing else.
    ``not_after``: readings stamped later than this are refused (a clock running ahead).
    Accepted readings are normalised as they go on the topic: unit canonical, time in UTC."""
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    out = Sorted(accepted, rejected)
    convert, canonical = units.normalise, units.CANONICAL
    for index, item in enumerate(items):
        if checked:
            record: ReadingRecord = item
        else:
            checked_item = _check(index, item)
            if isinstance(checked_item, Rejection):
                rejected.append(checked_item)
                continue
            record = checked_item
        # In UTC first: comparing datetimes that share a tzinfo object skips their offsets.
        device_id, ts = record["device_id"], record["ts"].astimezone(UTC)
        if only_device is not None and device_id != only_device:
            reason = f"device_id: this key may only send readings of device {only_device!r}"
            rejected.append(Rejection(index, reason, item))
            continue
        if not_after is not None and ts > not_after:
            reason = (
                f"ts: {ts.isoformat()} is ahead of the server's clock by more than "
                "the allowed skew; check the device's clock"
            )
            rejected.append(Rejection(index, reason, item))
            continue
        metric, unit, value = record["metric"], record["unit"], record["value"]
        if canonical.get(metric, unit) != unit:
            try:
                unit, value = convert(metric, unit, value)
            except units.UnitError as exc:
                rejected.append(Rejection(index, str(exc), item))
                continue
        us = micros(ts)
        given = record.get("reading_id")
        if given is None:
            accepted.append(
                Accepted((device_id, metric, us), device_id, metric, unit, us, value,
                         record.get("location"), None, index)
            )  # fmt: skip
        else:
            rid = str(given)
            accepted.append(
                Accepted(rid, device_id, metric, unit, us, value, record.get("location"), rid,
                         index)
            )  # fmt: skip
    return out


class RecentIds:
    """Ids of readings recently handed to the broker, so a retried batch is not sent twice.

    Bounded, in two generations: ids go into the newer; once it holds ``capacity`` / 2, it
    becomes the older and the older is forgotten whole, so the latest ``capacity`` / 2 ids at
    least (``capacity`` at most) are remembered. Forgetting the oldest id by id (a lookup and
    a delete a reading, and a walk past the holes that left at the table's start) made this
    table 2.2 us of ingest's ~9 us a reading at 45,000 readings/s.

    Ids are claimed before the hand-off and settled after it: a concurrent request carrying
    the same ids sees them as taken, and a failed hand-off releases them for the client's
    retry. A generation holding a claim not yet settled is not forgotten.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._half = max(1, capacity // 2)
        # The ids claimed (in flight or delivered), the newer and the older generation.
        self._new: dict[Hashable, None] = {}
        self._old: dict[Hashable, None] = {}
        self._open = [0, 0]  # claims not settled yet, made into the [older, newer]

    def claim(self, ids: Sequence[Hashable]) -> list[bool]:
        """For each id, whether it is new (and now claimed by the caller, who must settle
        exactly the new ones, in one call)."""
        new, old = self._new, self._old
        if new.keys().isdisjoint(ids) and old.keys().isdisjoint(ids):
            before = len(new)
            new.update(dict.fromkeys(ids))  # the usual case: a new batch, no loop
            if len(new) - before == len(ids):
                fresh = [True] * len(ids)
            else:  # an id repeated within the batch: its first time is the new one
                seen: set[Hashable] = set()
                fresh = []
                for key in ids:
                    fresh.append(key not in seen)
                    seen.add(key)
        else:
            fresh = [False] * len(ids)
            for i, key in enumerate(ids):
                if key not in new and key not in old:
                    new[key] = None
                    fresh[i] = True
        if True in fresh:
            self._open[1] += 1
        return fresh

    def settle(self, ids: Sequence[Hashable], *, delivered: bool) -> None:
        """The claimed ids were delivered (remember them) or not (release them)."""
        if not ids:
            return
        new, old = self._new, self._old
        older = ids[0] not in new  # claimed before the last turn
        self._open[0 if older else 1] -= 1
        if not delivered:
            for key in ids:
                new.pop(key, None)
                old.pop(key, None)
        elif older:  # remembered from now on, not only until the older generation goes
            new.update(dict.fromkeys(ids))
        if len(new) >= self._half and not self._open[0]:
            self._old, self._new = new, {}
            self._open = [self._open[1], 0]

    def __len__(self) -> int:
        """Ids remembered: delivered, or claimed and in flight."""
        return len(self._new) + len(self._old)
