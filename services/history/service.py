"""History queries over readings, rollups and alert transitions, on either storage layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from rules.indicators import Direction, Indicator
from schemas.alerts import Level, ScopeLevel, TransitionKind
from services.history.models import (
    Aggregation,
    Bucket,
    LatestValue,
    LatestValues,
    Series,
    SeriesPoint,
    TransitionHistory,
    TransitionPage,
)
from services.paging import Filters, page
from services.storage.layout import Layout

Conn = AsyncConnection[tuple[object, ...]]

MAX_POINTS = 10_000
MAX_RANGE = timedelta(days=400)

SCOPE_COLUMN = {
    ScopeLevel.DEVICE: "device_id",
    ScopeLevel.GRID: "grid",
    ScopeLevel.STREET: "street",
    ScopeLevel.DISTRICT: "district",
}


class BadRange(ValueError):
    """A time range or bucket the API cannot answer, with the reason."""


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """Where a series is read from."""

    rollup: str  # readings_1m or readings_1h


def plan_series(start: datetime, end: datetime, bucket: Bucket) -> SeriesPlan:
    """Check a series request and pick the coarsest rollup that divides the bucket."""
    if end <= start:
        raise BadRange(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    if end - start > MAX_RANGE:
        raise BadRange(f"the range may span at most {MAX_RANGE.days} days")
    points = (end - start) / bucket.width
    if points > MAX_POINTS:
        raise BadRange(
            f"{int(points)} buckets of {bucket.value} exceed the limit of {MAX_POINTS}; "
            "choose a larger bucket or a shorter range"
        )
    hourly = bucket.width % timedelta(hours=1) == timedelta(0)
    return SeriesPlan(rollup="readings_1h" if hourly else "readings_1m")


def bucket_value(aggregation: Aggregation, row: dict[str, object]) -> float:
    """One bucket's value from its partial aggregates."""
    samples = cast(int, row["samples"])
    match aggregation:
        case Aggregation.MEAN:
            return cast(float, row["total"]) / samples
        case Aggregation.MIN:
            return cast(float, row["min_value"])
        case Aggregation.MAX:
            return cast(float, row["max_value"])
        case Aggregation.SUM:
            return cast(float, row["total"])
        case Aggregation.COUNT:
            return float(samples)
        case Aggregation.LAST:
            return cast(float, row["last_value"])


def _scope_filter(level: ScopeLevel, scope_id: str) -> tuple[sql.Composable, list[object]]:
    if level is ScopeLevel.CITY:
        return sql.SQL(""), []
    return sql.SQL(" AND {} = %s").format(sql.Identifier(SCOPE_COLUMN[level])), [scope_id]


_BUCKETS = sql.SQL(
    "SELECT {bin} AS bucket, sum(samples)::bigint AS samples, sum(total) AS total, "
    "min(min_value) AS min_value, max(max_value) AS max_value, "
    "(array_agg(last_value ORDER BY last_ts DESC))[1] AS last_value "
    "FROM ({parts}) parts GROUP BY 1 ORDER BY 1"
)


async def series(
    conn: Conn,
    *,
    layout: Layout,
    indicator: Indicator,
    scope_id: str,
    start: datetime,
    end: datetime,
    bucket: Bucket,
    aggregation: Aggregation,
) -> Series:
    """The indicator's metric in one scope, bucketed. On plain PostgreSQL the rollup answers
    up to its refresh watermark and raw readings answer after it; TimescaleDB's real-time
    continuous aggregates do the same by themselves."""
    plan = plan_series(start, end, bucket)
    scope_sql, scope_params = _scope_filter(indicator.scope_level, scope_id)
    rollup = sql.SQL(
        "SELECT bucket AS t, samples, total, min_value, max_value, last_value, last_ts "
        "FROM {rollup} WHERE metric = %s{scope} AND bucket >= %s AND bucket < %s"
    ).format(rollup=sql.Identifier(plan.rollup), scope=scope_sql)
    params: list[object] = [indicator.metric, *scope_params]
    if layout is Layout.TIMESCALEDB:
        parts: sql.Composable = rollup
        params += [start, end]
        binned = sql.SQL("time_bucket(%s, t)")
    else:
        found = await conn.execute(
            "SELECT refreshed_to FROM rollup_watermarks WHERE rollup = %s", (plan.rollup,)
        )
        row = await found.fetchone()
        watermark = cast(datetime, row[0]) if row else start
        watermark = min(max(watermark, start), end)
        raw = sql.SQL(
            "SELECT ts, 1::bigint, value, value, value, value, ts FROM readings "
            "WHERE metric = %s{scope} AND ts >= %s AND ts < %s"
        ).format(scope=scope_sql)
        parts = rollup + sql.SQL(" UNION ALL ") + raw
        params += [start, watermark, indicator.metric, *scope_params, watermark, end]
        binned = sql.SQL("date_bin(%s, t, TIMESTAMPTZ '2000-01-01 00:00:00+00')")
    query = _BUCKETS.format(bin=binned, parts=parts)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [bucket.width, *params])
        rows = await cur.fetchall()
    return Series(
        indicator=indicator.code,
        metric=indicator.metric,
        unit=indicator.unit,
        scope_level=indicator.scope_level,
        scope_id=scope_id if indicator.scope_level is not ScopeLevel.CITY else "city",
        start=start,
        end=end,
        bucket=bucket,
        aggregation=aggregation,
        source=plan.rollup,
        points=[
            SeriesPoint(
                bucket=cast(datetime, r["bucket"]),
                value=bucket_value(aggregation, r),
                samples=int(cast(int, r["samples"])),
            )
            for r in rows
        ],
    )


def _worst_first(indicator: Indicator) -> tuple[sql.Composable, list[object]]:
    """ORDER BY terms putting a scope's worst value first: the highest for upward indicators,
    the lowest for downward ones, the farthest out of the band for banded ones."""
    if indicator.direction is Direction.OUTSIDE and indicator.band is not None:
        band = indicator.band
        return sql.SQL("greatest(%s - value, value - %s) DESC"), [band.low, band.high]
    return sql.SQL("value DESC" if indicator.direction is Direction.ABOVE else "value ASC"), []


async def latest(
    conn: Conn,
    *,
    indicators: Sequence[Indicator],
    scope_id: str | None,
    since: datetime,
    limit: int,
) -> LatestValues:
    """Per indicator and scope, the worst of its devices' latest readings since ``since``
    (the highest for indicators that breach upwards, the lowest for downwards)."""
    items: list[LatestValue] = []
    truncated = False
    for indicator in indicators:
        level = indicator.scope_level
        scope = (
            sql.SQL("'city'") if level is ScopeLevel.CITY else sql.Identifier(SCOPE_COLUMN[level])
        )
        where: sql.Composable = sql.SQL("metric = %s AND ts >= %s")
        params: list[object] = [indicator.metric, since]
        if scope_id is not None and level is not ScopeLevel.CITY:
            where += sql.SQL(" AND {} = %s").format(sql.Identifier(SCOPE_COLUMN[level]))
            params.append(scope_id)
        worst, worst_params = _worst_first(indicator)
        query = sql.SQL(
            "SELECT DISTINCT ON (scope) scope, value, ts, device_id FROM ("
            " SELECT DISTINCT ON (device_id) {scope} AS scope, value, ts, device_id"
            " FROM readings WHERE {where} ORDER BY device_id, ts DESC"
            ") newest WHERE scope IS NOT NULL ORDER BY scope, {worst} LIMIT %s"
        ).format(scope=scope, where=where, worst=worst)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, [*params, *worst_params, limit + 1])
            rows = await cur.fetchall()
        truncated = truncated or len(rows) > limit
        items += [
            LatestValue(
                indicator=indicator.code,
                scope_level=level,
                scope_id=str(r["scope"]),
                value=cast(float, r["value"]),
                unit=indicator.unit,
                ts=cast(datetime, r["ts"]),
                device_id=str(r["device_id"]),
            )
            for r in rows[:limit]
        ]
    return LatestValues(since=since, items=items, truncated=truncated)


async def transitions(
    conn: Conn,
    *,
    indicator: str | None,
    scope_id: str | None,
    level: Level | None,
    kind: TransitionKind | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    offset: int,
) -> TransitionPage:
    """Alert transitions matching the filters, newest first."""
    filters = Filters().equal(
        [("indicator", indicator), ("scope_id", scope_id), ("level", level), ("kind", kind)]
    )
    if start is not None:
        filters.add("observed_at >= %s", start)
    if end is not None:
        filters.add("observed_at < %s", end)
    rows, total = await page(
        conn,
        table="alert_transitions",
        columns=sql.SQL(
            "transition_id, alert_id, seq, kind, indicator, scope_level, scope_id, "
            "level, previous_level, value, threshold, occurrences, observed_at"
        ),
        filters=filters,
        order="observed_at DESC, transition_id",
        limit=limit,
        offset=offset,
    )
    return TransitionPage(
        items=[TransitionHistory.model_validate(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )
