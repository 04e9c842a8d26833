"""Frames off the readings topic as the rows the writer copies into ``readings``.

A row keeps a reading's time as the frame's microseconds and a derived id as its 16 bytes:
a datetime and a UUID object a reading were a fifth of the writer's time. The COPY takes
them through the two dumpers ``register_dumpers`` adds to the writer's connection (by type OID, as
``Copy.set_types`` looks them up); datetimes and UUIDs still go through as before."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg import postgres
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format
from psycopg.types.datetime import DatetimeBinaryDumper

from schemas.readings import ReadingFrame, reading_id_bytes

_NOWHERE = (None, None, None, None, None)
_PG_EPOCH_US = 946_684_800_000_000  # PostgreSQL counts time from 2000-01-01 UTC
_INT8 = struct.Struct(">q").pack


def frame_rows(frame: ReadingFrame, ingested_at: datetime) -> list[tuple[object, ...]]:
    """A frame's readings (checked by ``read_frame``) as rows in ``READING_COLUMNS`` order."""
    columns = frame["places"]
    count = len(next(iter(columns.values()), []))  # type: ignore[arg-type]
    nothing = [None] * count
    places = list(
        zip(
            columns.get("grid", nothing), columns.get("street", nothing),
            columns.get("district", nothing), columns.get("lon", nothing),
            columns.get("lat", nothing), strict=True,
        )
    )  # fmt: skip
    ids: list[uuid.UUID | None] = frame.get("reading_id") or [None] * len(frame["ts"])
    rows: list[tuple[object, ...]] = []
    for device, metric, unit, us, value, place, given in zip(
        frame["device_id"], frame["metric"], frame["unit"], frame["ts"], frame["value"],
        frame["place"], ids, strict=True,
    ):  # fmt: skip
        reading_id = reading_id_bytes(device, metric, us) if given is None else given
        grid, street, district, lon, lat = _NOWHERE if place is None else places[place]
        rows.append(
            (us, reading_id, device, metric, value, unit, grid, street, district, lon, lat,
             ingested_at)
        )  # fmt: skip
    return rows


def minutes_of(rows: list[tuple[object, ...]]) -> list[datetime]:
    """The minute buckets (UTC) of ``frame_rows``' rows."""
    minutes = {row[0] // 60_000_000 for row in rows}  # type: ignore[operator]
    return [datetime.fromtimestamp(m * 60, UTC) for m in sorted(minutes)]


class TimeDumper(DatetimeBinaryDumper):
    """timestamptz: microseconds since 1970 as they are, or a datetime."""

    def dump(self, obj: Any) -> bytes:
        if type(obj) is int:
            return _INT8(obj - _PG_EPOCH_US)
        return bytes(super().dump(obj) or b"")


class IdDumper(Dumper):
    """uuid: 16 bytes as they are, or a UUID."""

    format = Format.BINARY
    oid = postgres.types["uuid"].oid

    def dump(self, obj: Any) -> bytes:
        return obj if type(obj) is bytes else bytes(obj.bytes)


def register_dumpers(adapters: AdaptersMap) -> None:
    """Let a connection's COPY with ``set_types`` take ``frame_rows``' rows."""
    adapters.register_dumper(None, TimeDumper)
    adapters.register_dumper(None, IdDumper)
