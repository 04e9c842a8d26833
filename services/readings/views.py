"""Reading endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query

from schemas.alerts import ScopeLevel
from schemas.base import CODE_PATTERN, utcnow
from services.api.deps import MAX_PAGE_SIZE, ConnDep
from services.readings import service
from services.readings.models import LatestReadings

router = APIRouter(prefix="/api/v1/scopes", tags=["readings"])


@router.get(
    "/{scope_level}/{scope_id}/readings/latest",
    response_model=LatestReadings,
    summary="Latest readings of a scope",
)
async def latest_readings(
    conn: ConnDep,
    scope_level: ScopeLevel,
    scope_id: Annotated[str, Path(min_length=1, max_length=64, pattern=CODE_PATTERN)],
    metric: Annotated[str | None, Query(max_length=64, pattern=CODE_PATTERN)] = None,
    within_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 500,
) -> LatestReadings:
    """The newest reading of every device and metric in a device, grid, street, district or
    the whole city (scope id ``city``), looking back ``within_minutes``."""
    since = utcnow() - timedelta(minutes=within_minutes)
    items = await service.latest(
        conn,
        scope_level=scope_level,
        scope_id=scope_id,
        since=since,
        metric=metric,
        limit=limit + 1,
    )
    return LatestReadings(
        scope_level=scope_level,
        scope_id=scope_id,
        since=since,
        items=items[:limit],
        truncated=len(items) > limit,
    )
