"""Alert queries."""

from __future__ import annotations

import uuid

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from schemas.alerts import Condition, Level
from services.alerts.models import AlertDetail, AlertPage, AlertRead, AlertStatus, TransitionRead
from services.paging import Filters, page

_ALERT_COLUMNS = sql.SQL(
    "alert_id, indicator, scope_level, scope_id, condition, status, level, peak_level, value, "
    "threshold, "
    "occurrences, opened_at, updated_at, resolved_at"
)


async def list_(
    conn: AsyncConnection[tuple[object, ...]],
    *,
    status: AlertStatus | None = None,
    condition: Condition | None = None,
    level: Level | None = None,
    indicator: str | None = None,
    scope_id: str | None = None,
    limit: int,
    offset: int,
) -> AlertPage:
    """Alerts matching the filters, most recently changed first."""
    filters = Filters().equal(
        [
            ("status", status),
            ("condition", condition),
            ("level", level),
            ("indicator", indicator),
            ("scope_id", scope_id),
        ]
    )
    rows, total = await page(
        conn,
        table="alerts",
        columns=_ALERT_COLUMNS,
        filters=filters,
        order="updated_at DESC, alert_id",
        limit=limit,
        offset=offset,
    )
    return AlertPage(
        items=[AlertRead.model_validate(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


async def get(
    conn: AsyncConnection[tuple[object, ...]], *, alert_id: uuid.UUID
) -> AlertDetail | None:
    """One alert with its transitions in order, None when there is no such alert."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM alerts WHERE alert_id = %s").format(_ALERT_COLUMNS), [alert_id]
        )
        row = await cur.fetchone()
        if row is None:
            return None
        await cur.execute(
            "SELECT transition_id, seq, kind, condition, level, previous_level, value, threshold, "
            "occurrences, observed_at, reading_id FROM alert_transitions "
            "WHERE alert_id = %s ORDER BY seq",
            [alert_id],
        )
        transitions = [TransitionRead.model_validate(t) for t in await cur.fetchall()]
    return AlertDetail(**row, transitions=transitions)
