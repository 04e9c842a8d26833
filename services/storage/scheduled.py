"""Periodic storage upkeep: rollup refresh, retention, and TimescaleDB policies.

On plain PostgreSQL the writer runs ``maintain`` once a minute under an advisory lock (so
one replica at a time does it). It does what TimescaleDB's continuous-aggregate and retention
policies do on the other layout: compute the rollup buckets completed since the last round,
recompute the older ones whose readings changed since (the writer marks them in
``rollup_dirty``: late data of any age is taken in), and delete rows past their retention.
A round costs what changed, not the last hour of readings. Every few rounds it also vacuums
and analyzes the readings table, at the round's fixed second rather than whenever
autovacuum's insert threshold falls (``readings_vacuum_minutes``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import psycopg
from psycopg import sql

from services.config import StorageSettings
from services.storage import timescale
from services.storage.layout import Layout

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[tuple[object, ...]]

# Any constant: only one writer replica refreshes rollups at a time.
_MAINTENANCE_LOCK = 0x63697479  # "city"
_EPOCH = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
DELETE_CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str
    width: timedelta
    source: str  # raw readings, or the finer rollup it is built from
    feeds: Rollup | None = None  # the coarser rollup built from this one


HOUR = Rollup("readings_1h", timedelta(hours=1), "readings_1m")
MINUTE = Rollup("readings_1m", timedelta(minutes=1), "readings", feeds=HOUR)

# The writer's mark on the minute buckets of the readings it stores (plain layout only).
MARK_CHANGED = f"""
INSERT INTO rollup_dirty (rollup, bucket)
SELECT '{MINUTE.name}', unnest(%s::timestamptz[])
ON CONFLICT DO NOTHING
"""

# A bucket's last value is the greatest [time, value] pair's value: one pass, no look-up.
# Sorting every reading (array_agg ORDER BY) made a minute at 15,000 readings/s cost 2.0-3.0 s
# of one core; a probe per bucket for the value at its last time needs an index by device
# (migration 0012 dropped it: it was most of PostgreSQL's CPU a reading), and through the
# BRIN index alone a probe reads a block range, so a city of devices reporting every few
# minutes, a probe for nearly every reading, would read each reading thousands of times.
# The pair costs ~0.16 us a reading (5,000,000 readings of 3,000 series: 2.7 s, 1.95 s
# without a last value). date_part's epoch is exact to the microsecond for centuries.
_FROM_READINGS = """
INSERT INTO {target} (bucket, device_id, metric, grid, street, district, samples, total,
                      min_value, max_value, last_value, last_ts)
SELECT date_bin(%(width)s, ts, {epoch}), device_id, metric, grid, street, district,
       count(*), sum(value), min(value), max(value),
       (max(ARRAY[date_part('epoch', ts), value]))[2], max(ts)
FROM readings
WHERE ts >= %(start)s AND ts < %(end)s
GROUP BY 1, device_id, metric, grid, street, district
"""

# A refresh from raw readings reads the range through the BRIN index on ts, whatever the
# statistics say, and groups in up to 64 MB; JIT compiled the query in 170 ms of every round
# for nothing.
_RAW_PLAN = "SET LOCAL enable_seqscan = off; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"

# Whether readings has never been analysed: upkeep analyses it only every few rounds, and
# without statistics the planner sorted a minute of 90,000 readings/s on disk (575 MB, 10 s)
# to group what hashing groups in 2.4 s.
_NEVER_ANALYSED = """
SELECT last_analyze IS NULL AND last_autoanalyze IS NULL
FROM pg_stat_user_tables WHERE relid = 'readings'::regclass
"""

_FROM_ROLLUP = """
INSERT INTO {target} (bucket, device_id, metric, grid, street, district, samples, total,
                      min_value, max_value, last_value, last_ts)
SELECT date_bin(%(width)s, bucket, {epoch}), device_id, metric, grid, street, district,
       sum(samples), sum(total), min(min_value), max(max_value),
       (array_agg(last_value ORDER BY last_ts DESC))[1], max(last_ts)
FROM {source}
WHERE bucket >= %(start)s AND bucket < %(end)s
GROUP BY 1, device_id, metric, grid, street, district
"""


def until_round(now: float, interval: float, offset: float) -> float:
    """Seconds from ``now`` (epoch s) to the next upkeep round: the next moment ``offset``
    seconds past a multiple of ``interval``. A round that overran its slot waits for the next."""
    return (offset - now) % interval or interval


def floor_to(moment: datetime, width: timedelta) -> datetime:
    """The start of the bucket of ``width`` that holds ``moment`` (buckets from 2000-01-01)."""
    epoch = datetime(2000, 1, 1, tzinfo=moment.tzinfo)
    return moment - (moment - epoch) % width


def refresh_ranges(
    *,
    refreshed_to: datetime | None,
    earliest: datetime | None,
    now: datetime,
    width: timedelta,
    changed: Iterable[datetime],
) -> tuple[list[tuple[datetime, datetime]], datetime | None]:
    """Bucket ranges [start, end) to recompute, and the new watermark (None: it stays).

    Every bucket from the watermark (or the first data) up to the last complete one; before
    the watermark, each bucket whose data changed since it was computed (``changed``), runs of
    them merged."""
    end = floor_to(now, width)
    if refreshed_to is not None:
        start: datetime | None = refreshed_to
    else:
        start = None if earliest is None else floor_to(earliest, width)
    fresh = (start, end) if start is not None and start < end else None
    before = end if fresh is None else fresh[0]
    ranges: list[tuple[datetime, datetime]] = []
    for bucket in sorted({floor_to(b, width) for b in changed if b < before}):
        if ranges and ranges[-1][1] == bucket:
            ranges[-1] = (ranges[-1][0], bucket + width)
        else:
            ranges.append((bucket, bucket + width))
    if fresh is not None:
        ranges.append(fresh)
    return ranges, None if fresh is None else end


async def refresh(conn: Conn, rollup: Rollup, *, now: datetime) -> int:
    """Bring the rollup up to date in one transaction; rows written."""
    async with conn.transaction():
        if rollup.source == "readings":
            await conn.execute(_RAW_PLAN)
        cur = await conn.execute(
            "SELECT refreshed_to FROM rollup_watermarks WHERE rollup = %s FOR UPDATE",
            (rollup.name,),
        )
        row = await cur.fetchone()
        refreshed_to = cast(datetime, row[0]) if row else None
        earliest: datetime | None = None
        if refreshed_to is None:
            column = "ts" if rollup.source == "readings" else "bucket"
            cur = await conn.execute(
                sql.SQL("SELECT min({}) FROM {}").format(
                    sql.Identifier(column), sql.Identifier(rollup.source)
                )
            )
            first = await cur.fetchone()
            earliest = cast(datetime | None, first[0]) if first else None
        if rollup.source != "readings":
            # Only what the finer rollup has already recomputed is final enough to roll up.
            cur = await conn.execute(
                "SELECT refreshed_to FROM rollup_watermarks WHERE rollup = %s", (MINUTE.name,)
            )
            finer = await cur.fetchone()
            if finer is None:
                return 0
            now = min(now, cast(datetime, finer[0]))
        # Marks of complete buckets are taken (a writer committing one later leaves it for
        # the next round); the recomputation below reads at least what they marked.
        cur = await conn.execute(
            "DELETE FROM rollup_dirty WHERE rollup = %s AND bucket < %s RETURNING bucket",
            (rollup.name, floor_to(now, rollup.width)),
        )
        changed = [cast(datetime, b) for (b,) in await cur.fetchall()]
        ranges, mark = refresh_ranges(
            refreshed_to=refreshed_to,
            earliest=earliest,
            now=now,
            width=rollup.width,
            changed=changed,
        )
        template = _FROM_READINGS if rollup.source == "readings" else _FROM_ROLLUP
        insert = sql.SQL(template).format(
            target=sql.Identifier(rollup.name),
            source=sql.Identifier(rollup.source),
            epoch=sql.SQL(_EPOCH),
        )
        delete = sql.SQL("DELETE FROM {} WHERE bucket >= %(start)s AND bucket < %(end)s").format(
            sql.Identifier(rollup.name)
        )
        written = 0
        for start, end in ranges:
            params = {"start": start, "end": end, "width": rollup.width}
            await conn.execute(delete, params)
            cur = await conn.execute(insert, params)
            written += cur.rowcount
        late = ranges if mark is None else ranges[:-1]
        if rollup.feeds is not None and late:
            # Buckets recomputed before the watermark may lie in coarser buckets already
            # computed: mark those for the coarser rollup's next round.
            width = rollup.feeds.width
            coarse: set[datetime] = set()
            for start, end in late:
                bucket = floor_to(start, width)
                while bucket < end:
                    coarse.add(bucket)
                    bucket += width
            await conn.execute(
                "INSERT INTO rollup_dirty (rollup, bucket) SELECT %s, unnest(%s::timestamptz[]) "
                "ON CONFLICT DO NOTHING",
                (rollup.feeds.name, sorted(coarse)),
            )
        if mark is not None:
            await conn.execute(
                "INSERT INTO rollup_watermarks (rollup, refreshed_to) VALUES (%s, %s) "
                "ON CONFLICT (rollup) DO UPDATE SET refreshed_to = EXCLUDED.refreshed_to",
                (rollup.name, mark),
            )
    return written


# (relation, time column, settings field)
_RETAINED = (
    ("readings", "ts", "readings_retention_days"),
    ("indicator_values", "window_start", "indicator_values_retention_days"),
    ("alert_transitions", "observed_at", "alert_transitions_retention_days"),
    ("readings_1m", "bucket", "rollup_1m_retention_days"),
)


async def apply_retention(conn: Conn, storage: StorageSettings, *, now: datetime) -> int:
    """Delete rows past their retention, in chunks so no transaction grows large."""
    deleted = 0
    for relation, column, setting in _RETAINED:
        days = getattr(storage, setting)
        if days is None:
            continue
        cutoff = now - timedelta(days=days)
        query = sql.SQL(
            "DELETE FROM {rel} WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {rel} WHERE {col} < %s LIMIT %s))"
        ).format(rel=sql.Identifier(relation), col=sql.Identifier(column))
        while True:
            cur = await conn.execute(query, (cutoff, DELETE_CHUNK))
            deleted += cur.rowcount
            if cur.rowcount < DELETE_CHUNK:
                break
    return deleted


# Autovacuum's fallback on readings when upkeep vacuums it (readings_vacuum_minutes): a
# vacuum after 20 million inserts and an analyze after 10 million, instead of after a fifth
# and a tenth of the table (about once a minute at 15,000 readings/s). Dead rows (retention's
# deletes) and wraparound still trigger it as usual.
_READINGS_AUTOVACUUM = (
    "autovacuum_vacuum_insert_threshold = 20000000, autovacuum_vacuum_insert_scale_factor = 0, "
    "autovacuum_analyze_threshold = 10000000, autovacuum_analyze_scale_factor = 0"
)


def vacuum_due(now: datetime, every_minutes: int | None) -> bool:
    """Whether the upkeep round at ``now`` vacuums the readings table: the one round in each
    multiple of ``every_minutes`` (rounds run once a minute, at a fixed second)."""
    if every_minutes is None:
        return False
    return (now.hour * 60 + now.minute) % every_minutes == 0


async def autovacuum_readings(conn: Conn, storage: StorageSettings) -> None:
    """Leave readings to upkeep's vacuum with autovacuum as a rare fallback, or reset it to
    autovacuum's defaults when upkeep does not vacuum it."""
    if storage.readings_vacuum_minutes is None:
        statement = f"ALTER TABLE readings RESET ({_RESET})"
    else:
        statement = f"ALTER TABLE readings SET ({_READINGS_AUTOVACUUM})"
    await conn.execute(sql.SQL(statement))


_RESET = ", ".join(part.split(" = ")[0] for part in _READINGS_AUTOVACUUM.split(", "))


async def maintain(conn: Conn, storage: StorageSettings, *, now: datetime) -> bool:
    """One round of plain-layout upkeep; False when another replica holds the lock."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_MAINTENANCE_LOCK,))
    got = await cur.fetchone()
    if not got or not got[0]:
        return False
    try:
        # Block ranges written since the last round have no BRIN summary yet, and a range
        # without one matches every time: the refresh would read all of them (up to
        # readings_vacuum_minutes of readings), and so would every recent-readings query.
        # Summarising reads each new page once.
        await conn.execute("SELECT brin_summarize_new_values('readings_ts_brin')")
        cur = await conn.execute(_NEVER_ANALYSED)
        never = await cur.fetchone()
        if never is not None and never[0]:
            await conn.execute("ANALYZE readings")
        minutes = await refresh(conn, MINUTE, now=now)
        hours = await refresh(conn, HOUR, now=now)
        deleted = await apply_retention(conn, storage, now=now)
        if minutes or hours or deleted:
            log.info(
                "rollups refreshed (%d minute, %d hour rows); %d rows past retention deleted",
                minutes,
                hours,
                deleted,
            )
        if vacuum_due(now, storage.readings_vacuum_minutes):
            began = time.monotonic()
            await conn.execute("VACUUM (ANALYZE) readings")
            log.info("readings vacuumed and analyzed in %.1f s", time.monotonic() - began)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_LOCK,))
    return True


async def apply_policies(conn: Conn, storage: StorageSettings) -> None:
    """Make TimescaleDB's job policies match the settings (run at writer start)."""
    async with conn.transaction():
        for statement in timescale.policies(storage):
            await conn.execute(sql.SQL(statement))


async def prepare(conn: Conn, storage: StorageSettings) -> Layout:
    """Read the layout the schema was built with, log it, and set up its upkeep."""
    from services.storage.layout import current

    layout = await current(conn)
    log.info("storage layout: %s", layout.value)
    if layout is Layout.TIMESCALEDB:
        await apply_policies(conn, storage)
    else:
        await autovacuum_readings(conn, storage)
    return layout
