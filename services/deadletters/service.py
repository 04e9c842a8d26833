"""Dead-letter queries and bookkeeping."""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from services.deadletters.models import LetterPage, LetterRead
from services.paging import Filters, page

Conn = AsyncConnection[tuple[object, ...]]

_COLUMNS = sql.SQL(
    'letter_id, source, reason, payload, truncated, received_at, topic, partition, "offset", '
    "replayed_at, replayed_by, replay_outcome"
)


async def list_(
    conn: Conn,
    *,
    source: str | None,
    since: datetime | None,
    replayed: bool | None,
    limit: int,
    offset: int,
) -> LetterPage:
    """Dead letters matching the filters, newest first."""
    filters = Filters().equal([("source", source)])
    if since is not None:
        filters.add("received_at >= %s", since)
    if replayed is not None:
        filters.add("replayed_at IS NOT NULL" if replayed else "replayed_at IS NULL")
    rows, total = await page(
        conn,
        table="dead_letters",
        columns=_COLUMNS,
        filters=filters,
        order="received_at DESC, letter_id DESC",
        limit=limit,
        offset=offset,
    )
    return LetterPage(
        items=[LetterRead.model_validate(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


async def get_many(conn: Conn, *, letter_ids: list[int]) -> dict[int, LetterRead]:
    """The letters with these ids that exist."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM dead_letters WHERE letter_id = ANY(%s)").format(_COLUMNS),
            [letter_ids],
        )
        return {int(r["letter_id"]): LetterRead.model_validate(r) for r in await cur.fetchall()}


async def record_replay(
    conn: Conn, *, letter_id: int, replayed: bool, outcome: str, by: str
) -> None:
    """Note what a replay did; a successful one marks the letter replayed."""
    await conn.execute(
        "UPDATE dead_letters SET replay_outcome = %s, "
        "replayed_at = CASE WHEN %s THEN now() ELSE replayed_at END, "
        "replayed_by = CASE WHEN %s THEN %s ELSE replayed_by END WHERE letter_id = %s",
        (outcome, replayed, replayed, by, letter_id),
    )
