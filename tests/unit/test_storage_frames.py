"""Frames as the writer's COPY rows: times as PostgreSQL's int8, ids only where a client chose
them (or derived, for a table that still requires them)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson

from schemas.readings import derive_reading_id, read_frame
from services.storage.frames import (
    PG_EPOCH_US,
    READING_TYPES,
    frame_rows,
    minutes_of,
    pg_time,
    stored_reading_id,
)
from services.storage.writer import READING_COLUMNS

CHOSEN = uuid.UUID("0b8f8a55-3c1e-4a0e-9f5e-2d7c1f4b9a10")
FRAME = orjson.dumps(
    {
        "device_id": ["wl-1", "wl-2", "wl-1"],
        "metric": ["waterlogging_depth"] * 3,
        "unit": ["cm"] * 3,
        "ts": [1_782_000_000_000_000, 1_782_000_000_500_000, 1_782_000_061_000_000],
        "value": [12.5, 3.0, 13.0],
        "place": [0, None, 0],
        "places": {"district": ["yuexiu"], "grid": ["g-1"]},
        "reading_id": [None, str(CHOSEN), None],
    }
)
T0 = datetime(2026, 6, 21, 0, 0, tzinfo=UTC)


def test_times_go_as_postgresql_counts_them() -> None:
    assert pg_time(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert pg_time(T0) == int((T0 - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6
    assert pg_time(T0 + timedelta(microseconds=7)) - pg_time(T0) == 7
    assert len(READING_TYPES) == len(READING_COLUMNS)


def test_rows_keep_client_ids_and_leave_the_rest_to_be_derived_on_read() -> None:
    rows = frame_rows(read_frame(FRAME), pg_time(T0))
    assert [r[1] for r in rows] == [None, CHOSEN.bytes, None]
    first = dict(zip(READING_COLUMNS, rows[0], strict=True))
    assert first["ts"] == 1_782_000_000_000_000 - PG_EPOCH_US
    assert first["ingested_at"] == pg_time(T0)
    assert (first["device_id"], first["district"], first["grid"], first["street"]) == (
        "wl-1", "yuexiu", "g-1", None,
    )  # fmt: skip
    assert rows[1][6:11] == (None, None, None, None, None)  # no place
    assert minutes_of(rows) == [
        datetime.fromtimestamp(1_782_000_000 // 60 * 60, UTC),
        datetime.fromtimestamp(1_782_000_061 // 60 * 60, UTC),
    ]

    ts = datetime.fromtimestamp(1_782_000_000, UTC)
    derived = derive_reading_id("wl-1", "waterlogging_depth", ts.isoformat())
    assert stored_reading_id(None, "wl-1", "waterlogging_depth", ts) == derived
    assert stored_reading_id(CHOSEN, "wl-1", "waterlogging_depth", ts) == CHOSEN
    # Read back in another zone, the instant (and so the id) is the same.
    shanghai = ts.astimezone(timezone(timedelta(hours=8)))
    assert stored_reading_id(None, "wl-1", "waterlogging_depth", shanghai) == derived


def test_a_table_that_requires_ids_gets_the_derived_ones() -> None:
    rows = frame_rows(read_frame(FRAME), pg_time(T0), derive=True)
    assert [r[1] for r in rows] == [
        derive_reading_id("wl-1", "waterlogging_depth", "2026-06-21T00:00:00+00:00").bytes,
        CHOSEN.bytes,
        derive_reading_id("wl-1", "waterlogging_depth", "2026-06-21T00:01:01+00:00").bytes,
    ]
