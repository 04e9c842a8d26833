"""Shared fixtures: factories for test data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.readings import SensorReading

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def make_reading(
    value: float,
    *,
    at: int = 0,
    device: str = "dev-1",
    metric: str = "waterlogging_depth",
    **extra: Any,
) -> SensorReading:
    """A reading ``at`` seconds after T0."""
    return SensorReading(
        device_id=device,
        metric=metric,
        value=value,
        unit=extra.pop("unit", "cm"),
        ts=T0 + timedelta(seconds=at),
        **extra,
    )


@pytest.fixture
def reading_factory() -> Any:
    return make_reading
