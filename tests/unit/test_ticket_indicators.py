"""Ticket-count indicators count the right categories per scope and window."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from rules.indicators import Catalogue
from rules.tickets import count_tickets
from schemas.tickets import HotlineTicket

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def ticket(category: str, minutes: float, district: str | None) -> HotlineTicket:
    return HotlineTicket.model_validate(
        {
            "ticket_id": uuid.uuid4(),
            "category": category,
            "description": "路面积水",
            "reported_at": T0 + timedelta(minutes=minutes),
            "location": {"district": district},
        }
    )


def test_counts_only_listed_categories_per_district_and_hour() -> None:
    indicator = Catalogue.from_yaml().by_code["hotline.water_supply"]
    tickets = [
        ticket("utilities.water_outage", 5, "tianhe"),
        ticket("utilities.water_outage", 59, "tianhe"),
        ticket("utilities.water_outage", 61, "tianhe"),
        ticket("noise.construction", 10, "tianhe"),
        ticket("utilities.water_outage", 30, "yuexiu"),
        ticket("utilities.water_outage", 30, None),  # no district: counted nowhere
    ]
    ids, windows = count_tickets(indicator, list(reversed(tickets)))
    got = Counter(
        {
            (ids[int(s)], int(start) // 3_600_000): int(v)
            for s, start, v in zip(windows.scope, windows.start, windows.value, strict=True)
        }
    )
    hour = int(T0.timestamp()) // 3600
    assert got == Counter({("tianhe", hour): 2, ("tianhe", hour + 1): 1, ("yuexiu", hour): 1})


def test_sensor_indicators_are_refused() -> None:
    indicator = Catalogue.from_yaml().by_code["water.waterlogging_depth"]
    with pytest.raises(ValueError, match="source"):
        count_tickets(indicator, [])
