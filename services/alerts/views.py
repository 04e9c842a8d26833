"""Alert endpoints."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from schemas.alerts import Condition, Level
from schemas.base import CODE_PATTERN
from services.alerts import service
from services.alerts.models import AlertDetail, AlertPage, AlertStatus
from services.api.deps import MAX_PAGE_SIZE, ConnDep

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])


@router.get("", response_model=AlertPage, summary="List alerts")
async def list_alerts(
    conn: ConnDep,
    status: AlertStatus | None = None,
    condition: Condition | None = None,
    level: Level | None = None,
    indicator: Annotated[str | None, Query(max_length=64, pattern=CODE_PATTERN)] = None,
    scope_id: Annotated[str | None, Query(max_length=64, pattern=CODE_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> AlertPage:
    """Alerts, most recently changed first; filter by status, condition (threshold or
    no_data), level, indicator or scope."""
    return await service.list_(
        conn,
        status=status,
        condition=condition,
        level=level,
        indicator=indicator,
        scope_id=scope_id,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/{alert_id}",
    response_model=AlertDetail,
    summary="One alert with its history",
    responses={404: {"description": "No such alert."}},
)
async def get_alert(conn: ConnDep, alert_id: uuid.UUID) -> AlertDetail:
    """An alert and every transition it went through."""
    alert = await service.get(conn, alert_id=alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return alert
