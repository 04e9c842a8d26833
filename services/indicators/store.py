"""Versioned indicator definitions and emergency mode in PostgreSQL.

Every change appends a row (who, when, why); nothing is updated in place. ``version()`` is the
one number running engines poll to notice any change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from rules.indicators import Catalogue, Indicator
from rules.preview import Preview, preview

Conn = AsyncConnection[tuple[object, ...]]
CITY = "city"


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    code: str
    definition: Indicator | None
    changed_at: datetime
    changed_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class Switch:
    version: int
    scope: str
    active: bool
    changed_at: datetime
    changed_by: str
    reason: str


async def version(conn: Conn) -> int:
    """The highest version of any definition or emergency switch (0 when empty)."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT greatest((SELECT max(version) FROM indicator_versions), "
            "(SELECT max(version) FROM emergency_switches), 0)"
        )
        row = await cur.fetchone()
    return _int(row[0]) if row and row[0] is not None else 0


async def put(conn: Conn, indicator: Indicator | None, *, code: str, by: str, reason: str) -> int:
    """Append a version of one indicator (None retires it); returns the new version."""
    if indicator is not None and indicator.code != code:
        raise ValueError(f"code: the definition says {indicator.code!r}, the path {code!r}")
    async with conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO indicator_versions (code, definition, changed_by, reason) "
            "VALUES (%s, %s, %s, %s) RETURNING version",
            (
                code,
                None if indicator is None else Jsonb(indicator.model_dump(mode="json")),
                by,
                reason,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return _int(row[0])


async def current(conn: Conn) -> tuple[int, Catalogue]:
    """The live catalogue and the version it is as of (read in one snapshot)."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        at = await version(conn)
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT DISTINCT ON (code) definition FROM indicator_versions "
                "ORDER BY code, version DESC"
            )
            rows = await cur.fetchall()
    return at, Catalogue(Indicator.model_validate(r[0]) for r in rows if r[0] is not None)


async def load_catalogue(conn: Conn, catalogue: Catalogue, *, by: str, reason: str) -> int:
    """Store the definitions that differ from the live ones; returns how many changed."""
    _, live = await current(conn)
    changed = 0
    async with conn.transaction():
        for code, indicator in catalogue.by_code.items():
            if live.by_code.get(code) != indicator:
                await put(conn, indicator, code=code, by=by, reason=reason)
                changed += 1
    return changed


async def history(conn: Conn, code: str) -> list[Version]:
    """Every version of one indicator, newest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT version, code, definition, changed_at, changed_by, reason "
            "FROM indicator_versions WHERE code = %s ORDER BY version DESC",
            (code,),
        )
        rows = await cur.fetchall()
    return [
        Version(
            **{**r, "definition": None if r["definition"] is None else Indicator(**r["definition"])}
        )
        for r in rows
    ]


def compare(old: Indicator | None, new: Indicator | None) -> dict[str, tuple[object, object]]:
    """Fields that differ between two definitions: name -> (old, new)."""
    a = {} if old is None else old.model_dump(mode="json")
    b = {} if new is None else new.model_dump(mode="json")
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


async def rollback(conn: Conn, code: str, to: int, *, by: str, reason: str) -> int | None:
    """Make an earlier version live again as a new version; None if there is no such version."""
    found = {v.version: v for v in await history(conn, code)}
    if to not in found:
        return None
    return await put(conn, found[to].definition, code=code, by=by, reason=reason)


async def set_emergency(conn: Conn, scope: str, *, active: bool, by: str, reason: str) -> int:
    """Switch emergency mode on or off for a district (or 'city'); audited, returns the version."""
    async with conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO emergency_switches (scope, active, changed_by, reason) "
            "VALUES (%s, %s, %s, %s) RETURNING version",
            (scope, active, by, reason),
        )
        row = await cur.fetchone()
    assert row is not None
    return _int(row[0])


async def emergency(conn: Conn) -> list[Switch]:
    """The latest switch per scope (active or not)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT DISTINCT ON (scope) version, scope, active, changed_at, changed_by, reason "
            "FROM emergency_switches ORDER BY scope, version DESC"
        )
        return [Switch(**r) for r in await cur.fetchall()]


def in_emergency(switches: list[Switch], district: str | None) -> bool:
    """Whether a district (or, for None, the city) runs the emergency profile."""
    active = {s.scope for s in switches if s.active}
    return CITY in active or (district is not None and district in active)


_SCOPE_COLUMN = {
    "device": "device_id",
    "grid": "grid",
    "street": "street",
    "district": "district",
    "city": "'city'",
}


async def backtest(conn: Conn, indicator: Indicator, start: datetime, end: datetime) -> Preview:
    """The alerts a (candidate) sensor indicator would have raised over stored readings."""
    if indicator.metric is None:
        raise ValueError("source: preview reads stored sensor readings; tickets are not stored")
    column = _SCOPE_COLUMN[indicator.scope_level.value]
    async with conn.cursor() as cur:
        await cur.execute(
            f"SELECT {column} AS scope, (extract(epoch FROM ts) * 1000)::bigint, value "
            "FROM readings WHERE metric = %s AND ts >= %s AND ts < %s "
            f"AND {column} IS NOT NULL ORDER BY 1, 2",
            (indicator.metric, start, end),
        )
        rows = await cur.fetchall()
    ids: dict[str, int] = {}
    scope = np.fromiter((ids.setdefault(str(r[0]), len(ids)) for r in rows), np.int64, len(rows))
    ts = np.fromiter((_int(r[1]) for r in rows), np.int64, len(rows))
    value = np.fromiter((float(str(r[2])) for r in rows), np.float64, len(rows))
    return preview(indicator, list(ids), scope, ts, value)
