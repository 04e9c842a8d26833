"""Reading endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from schemas.alerts import ScopeLevel
from schemas.base import utcnow
from services.api.deps import ConnDep, SettingsDep
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
    settings: SettingsDep,
    scope_level: ScopeLevel,
    scope_id: Annotated[str, Path(min_length=1, max_length=64)],
    metric: Annotated[str | None, Query(max_length=64)] = None,
    within_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
    limit: Annotated[int, Query(ge=1)] = 500,
) -> LatestReadings:
    """The newest reading of every device and metric in a device, grid, street, district or
    the whole city (scope id ``city``), looking back ``within_minutes``."""
    if limit > settings.api.max_page_size:
        raise HTTPException(422, f"limit must be at most {settings.api.max_page_size}")
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
