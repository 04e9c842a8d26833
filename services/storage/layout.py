"""Which physical layout the history tables use: TimescaleDB when the server has the
extension and settings allow it, plain PostgreSQL otherwise. Chosen once, when the storage
migration runs, and recorded in ``storage_layout`` so every process reads the same answer."""

from __future__ import annotations

from enum import StrEnum

import psycopg


class Layout(StrEnum):
    PLAIN = "plain"  # BRIN-indexed tables, rollup tables refreshed by the writer
    TIMESCALEDB = "timescaledb"  # hypertables, continuous aggregates, policies


def choose(*, want_timescaledb: bool, available: bool) -> Layout:
    """The layout for a new schema."""
    return Layout.TIMESCALEDB if want_timescaledb and available else Layout.PLAIN


async def current(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> Layout:
    """The layout recorded by the storage migration."""
    cur = await conn.execute("SELECT layout FROM storage_layout")
    row = await cur.fetchone()
    return Layout(str(row[0])) if row else Layout.PLAIN
