"""Filtered, counted, paged listings: the query shape every list endpoint shares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row


@dataclass
class Filters:
    """WHERE conditions and their parameters, built up one filter at a time."""

    conditions: list[sql.Composable] = field(default_factory=list)
    params: list[object] = field(default_factory=list)

    def equal(self, pairs: Iterable[tuple[str, object | None]]) -> Filters:
        """``column = value`` for each pair whose value is given (enums by their value)."""
        for column, value in pairs:
            if value is not None:
                self.conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                self.params.append(str(value))
        return self

    def add(self, condition: str, *params: object) -> Filters:
        """A condition of our own text with its parameters."""
        self.conditions.append(sql.SQL(condition))
        self.params.extend(params)
        return self

    def clause(self) -> sql.Composable:
        if not self.conditions:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(self.conditions)


async def page(
    conn: AsyncConnection[tuple[object, ...]],
    *,
    table: str,
    columns: sql.Composable,
    filters: Filters,
    order: str,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of ``table``'s rows matching ``filters`` in ``order``, and how many match."""
    where = filters.clause()
    relation = sql.Identifier(table)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT count(*) AS n FROM {}").format(relation) + where, filters.params
        )
        total = await cur.fetchone()
        await cur.execute(
            sql.SQL("SELECT {} FROM {}").format(columns, relation)
            + where
            + sql.SQL(" ORDER BY ")
            + sql.SQL(order)
            + sql.SQL(" LIMIT %s OFFSET %s"),
            [*filters.params, limit, offset],
        )
        rows = await cur.fetchall()
    return rows, int(total["n"]) if total else 0
