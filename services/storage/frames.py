"""Frames off the readings topic as the rows the writer copies into ``readings``.

A row is made for psycopg's C binary dumpers, with no Python call per value: its two times go
as int8, microseconds since 2000-01-01 UTC, which is what a binary ``timestamptz`` is (the
server's ``timestamptz_recv`` reads that int8 and checks its range), and a reading id goes as
its 16 bytes (``uuid_recv`` reads 16 bytes). A reading without a client-chosen id is stored
with NULL: its id is derived from (device, metric, time) where it is read
(``stored_reading_id``), not a SHA-1 a reading on the write path. Tables that still require
the id (``derive=True``: a TimescaleDB older than 2.18 with compression on, which cannot drop
NOT NULL) get the derived bytes as before.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from schemas.readings import ReadingFrame, micros, reading_id_bytes

# The COPY's types for READING_COLUMNS (services/storage/writer.py), times and ids as above.
READING_TYPES = (
    "int8",  # ts
    "bytea",  # reading_id
    "text",
    "text",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "float8",
    "float8",
    "int8",  # ingested_at
)

PG_EPOCH_US = 946_684_800_000_000  # PostgreSQL counts time from 2000-01-01 UTC
_NOWHERE = (None, None, None, None, None)


def pg_time(moment: datetime) -> int:
    """A moment as a binary timestamptz's int8: microseconds since 2000-01-01 UTC."""
    return micros(moment) - PG_EPOCH_US


def frame_rows(
    frame: ReadingFrame, ingested_at: int, *, derive: bool = False
) -> list[tuple[object, ...]]:
    """A frame's readings (checked by ``read_frame``) as rows in ``READING_COLUMNS`` order;
    ``ingested_at`` as ``pg_time`` gives it. ``derive``: fill in the ids the clients left out."""
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
    given = frame.get("reading_id")
    ids: list[bytes | None]
    if given is None and not derive:
        ids = [None] * len(frame["ts"])
    else:
        ids = [
            reading_id_bytes(d, m, us) if i is None and derive else None if i is None else i.bytes
            for d, m, us, i in zip(
                frame["device_id"], frame["metric"], frame["ts"],
                given or [None] * len(frame["ts"]), strict=True,
            )
        ]  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for device, metric, unit, us, value, place, reading_id in zip(
        frame["device_id"], frame["metric"], frame["unit"], frame["ts"], frame["value"],
        frame["place"], ids, strict=True,
    ):  # fmt: skip
        grid, street, district, lon, lat = _NOWHERE if place is None else places[place]
        rows.append(
            (us - PG_EPOCH_US, reading_id, device, metric, value, unit, grid, street, district,
             lon, lat, ingested_at)
        )  # fmt: skip
    return rows


def minutes_of(rows: list[tuple[object, ...]]) -> list[datetime]:
    """The minute buckets (UTC) of ``frame_rows``' rows."""
    minutes = {(row[0] + PG_EPOCH_US) // 60_000_000 for row in rows}  # type: ignore[operator]
    return [datetime.fromtimestamp(m * 60, UTC) for m in sorted(minutes)]


def stored_reading_id(
    reading_id: uuid.UUID | None, device_id: str, metric: str, ts: datetime
) -> uuid.UUID:
    """A stored reading's id: the client's, or the one derived from what it is."""
    if reading_id is not None:
        return reading_id
    return uuid.UUID(bytes=reading_id_bytes(device_id, metric, micros(ts)))
