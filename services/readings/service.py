"""Reading queries."""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from schemas.alerts import ScopeLevel
from services.readings.models import ReadingRead
from services.storage.frames import stored_reading_id

_SCOPE_COLUMN = {
    ScopeLevel.DEVICE: "device_id",
    ScopeLevel.GRID: "grid",
    ScopeLevel.STREET: "street",
    ScopeLevel.DISTRICT: "district",
}


async def latest(
    conn: AsyncConnection[tuple[object, ...]],
    *,
    scope_level: ScopeLevel,
    scope_id: str,
    since: datetime,
    metric: str | None,
    limit: int,
) -> list[ReadingRead]:
    """Newest reading per device and metric within a scope, since a moment, at most ``limit``."""
    where: list[sql.Composable] = [sql.SQL("ts >= %s")]
    params: list[object] = [since]
    if scope_level is not ScopeLevel.CITY:
        where.append(sql.SQL("{} = %s").format(sql.Identifier(_SCOPE_COLUMN[scope_level])))
        params.append(scope_id)
    if metric is not None:
        where.append(sql.SQL("metric = %s"))
        params.append(metric)
    query = sql.SQL(
        "SELECT DISTINCT ON (device_id, metric) reading_id, device_id, metric, value, unit, ts, "
        "grid, street, district, lon, lat FROM readings WHERE {} "
        "ORDER BY device_id, metric, ts DESC LIMIT %s"
    ).format(sql.SQL(" AND ").join(where))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*params, limit])
        rows = await cur.fetchall()
    for r in rows:  # a reading stored without its client's id has it derived
        r["reading_id"] = stored_reading_id(r["reading_id"], r["device_id"], r["metric"], r["ts"])
    return [ReadingRead.model_validate(r) for r in rows]
