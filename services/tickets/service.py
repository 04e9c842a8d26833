"""Ticket queries: the ticket body and, only for whoever may see it, the caller."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

Conn = AsyncConnection[tuple[object, ...]]

_COLUMNS = sql.SQL(
    "t.ticket_id, t.category, t.description, t.reported_at, t.urgent, t.address, t.lon, t.lat, "
    "t.grid, t.street, t.district, t.media_url, t.channel, t.status, t.stage, t.updated_at, "
    "c.name AS caller_name, c.phone AS caller_phone"
)


@dataclass(frozen=True, slots=True)
class TicketFilter:
    ids: list[uuid.UUID] | None = None
    categories: list[str] | None = None
    statuses: list[str] | None = None
    start: datetime | None = None
    end: datetime | None = None


async def list_(
    conn: Conn, *, where: TicketFilter, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Tickets matching the filter, newest first, with their caller's data (for masking)."""
    clauses: list[sql.Composable] = []
    params: list[object] = []
    if where.ids is not None:
        clauses.append(sql.SQL("t.ticket_id = ANY(%s)"))
        params.append(where.ids)
    if where.categories is not None:
        clauses.append(sql.SQL("t.category = ANY(%s)"))
        params.append(where.categories)
    if where.statuses is not None:
        clauses.append(sql.SQL("t.status = ANY(%s)"))
        params.append(where.statuses)
    if where.start is not None:
        clauses.append(sql.SQL("t.reported_at >= %s"))
        params.append(where.start)
    if where.end is not None:
        clauses.append(sql.SQL("t.reported_at < %s"))
        params.append(where.end)
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    query = (
        sql.SQL("SELECT {} FROM tickets t LEFT JOIN ticket_callers c USING (ticket_id)").format(
            _COLUMNS
        )
        + clause
        + sql.SQL(" ORDER BY t.reported_at DESC, t.ticket_id LIMIT %s OFFSET %s")
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*params, limit, offset])
        return await cur.fetchall()
