"""Ticket-count indicators: 12345 tickets of some Open311 service codes counted per scope and
event-time window (reported_at), through the same vectorised core as sensor readings. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rules import core
from rules.indicators import Indicator, Source
from schemas.alerts import ScopeLevel
from schemas.tickets import HotlineTicket


def ticket_scope(indicator: Indicator, ticket: HotlineTicket) -> str | None:
    """The scope a ticket counts towards, None when it has no such place."""
    match indicator.scope_level:
        case ScopeLevel.GRID:
            return ticket.location.grid
        case ScopeLevel.STREET:
            return ticket.location.street
        case ScopeLevel.DISTRICT:
            return ticket.location.district
        case ScopeLevel.CITY:
            return "city"
        case _:
            return None


def count_tickets(
    indicator: Indicator, tickets: Sequence[HotlineTicket]
) -> tuple[list[str], core.WindowValues]:
    """Tickets per (scope, window) for a ticket indicator; scope indexes the returned ids."""
    if indicator.source is not Source.TICKETS:
        raise ValueError(f"source: {indicator.code} does not count tickets")
    wanted = set(indicator.ticket_categories)
    ids: dict[str, int] = {}
    scope: list[int] = []
    ts: list[int] = []
    for ticket in tickets:
        place = ticket_scope(indicator, ticket) if ticket.category in wanted else None
        if place is None:
            continue
        scope.append(ids.setdefault(place, len(ids)))
        ts.append(int(ticket.reported_at.timestamp() * 1000))
    windows = core.aggregate(
        np.array(scope, dtype=np.int64),
        np.array(ts, dtype=np.int64),
        np.ones(len(ts), dtype=np.float64),
        indicator.window_seconds * 1000,
        indicator.aggregation,
    )
    return list(ids), windows
