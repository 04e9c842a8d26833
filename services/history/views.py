"""History endpoints: series, latest values for the big screen, alert history."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime

from rules.indicators import Indicator
from schemas.alerts import Level, ScopeLevel, TransitionKind
from schemas.base import CODE_PATTERN, utcnow
from services.api.deps import MAX_PAGE_SIZE, CatalogueDep, ConnDep
from services.history import service
from services.history.models import (
    Aggregation,
    Bucket,
    LatestValues,
    Series,
    TransitionPage,
)
from services.storage.layout import current

router = APIRouter(prefix="/api/v1/history", tags=["history"])

CodeQuery = Annotated[str, Query(max_length=64, pattern=CODE_PATTERN)]
OptionalCode = Annotated[str | None, Query(max_length=64, pattern=CODE_PATTERN)]
MAX_INDICATORS = 50


def _indicator(catalogue: CatalogueDep, code: str) -> Indicator:
    indicator = catalogue.by_code.get(code)
    if indicator is None:
        raise HTTPException(404, f"unknown indicator {code!r}")
    if indicator.metric is None:
        # Ticket-count indicators have no readings to bucket; the rules engine's indicator
        # values will carry their history.
        raise HTTPException(
            422, f"{code} counts 12345 tickets: its history is not served from readings yet"
        )
    return indicator


@router.get(
    "/series",
    response_model=Series,
    summary="An indicator's series in one scope",
    responses={404: {"description": "Unknown indicator."}, 422: {"description": "Bad range."}},
)
async def get_series(
    conn: ConnDep,
    catalogue: CatalogueDep,
    indicator: CodeQuery,
    scope_id: OptionalCode = None,
    start: Annotated[AwareDatetime | None, Query(description="Default: end less 24 h.")] = None,
    end: Annotated[AwareDatetime | None, Query(description="Default: now.")] = None,
    bucket: Bucket = Bucket.MIN_5,
    aggregation: Aggregation = Aggregation.MEAN,
) -> Series:
    """The readings an indicator is computed from, in one scope at its scope level (a device,
    grid, street or district id; none for city indicators), aggregated per bucket. At most
    10,000 buckets and 400 days per request."""
    found = _indicator(catalogue, indicator)
    if found.scope_level is not ScopeLevel.CITY and scope_id is None:
        raise HTTPException(
            422, f"scope_id is required: {indicator} is measured per {found.scope_level.value}"
        )
    until = end or utcnow()
    since = start or until - timedelta(hours=24)
    try:
        service.plan_series(since, until, bucket)
    except service.BadRange as exc:
        raise HTTPException(422, str(exc)) from exc
    return await service.series(
        conn,
        layout=await current(conn),
        indicator=found,
        scope_id=scope_id or "city",
        start=since,
        end=until,
        bucket=bucket,
        aggregation=aggregation,
    )


@router.get(
    "/latest",
    response_model=LatestValues,
    summary="Latest values of many indicators at once",
    responses={404: {"description": "Unknown indicator."}},
)
async def get_latest(
    conn: ConnDep,
    catalogue: CatalogueDep,
    indicator: Annotated[
        list[str], Query(min_length=1, max_length=MAX_INDICATORS, description="Repeat for each.")
    ],
    scope_id: OptionalCode = None,
    since_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 200,
) -> LatestValues:
    """For each indicator and each of its scopes (or one scope), the worst latest value of the
    scope's devices: what the big screen shows. At most ``limit`` scopes per indicator."""
    for code in indicator:
        if len(code) > 64 or not re.fullmatch(CODE_PATTERN, code):
            raise HTTPException(422, f"indicator {code[:64]!r} is not an indicator code")
    found = [_indicator(catalogue, code) for code in dict.fromkeys(indicator)]
    return await service.latest(
        conn,
        indicators=found,
        scope_id=scope_id,
        since=utcnow() - timedelta(minutes=since_minutes),
        limit=limit,
    )


@router.get("/alerts", response_model=TransitionPage, summary="Alert history")
async def get_alert_history(
    conn: ConnDep,
    indicator: OptionalCode = None,
    scope_id: OptionalCode = None,
    level: Level | None = None,
    kind: TransitionKind | None = None,
    start: AwareDatetime | None = None,
    end: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> TransitionPage:
    """Every alert transition (firing, level changes, resolutions), newest first."""
    if start is not None and end is not None and end <= start:
        raise HTTPException(422, "end must be after start")
    return await service.transitions(
        conn,
        indicator=indicator,
        scope_id=scope_id,
        level=level,
        kind=kind,
        start=start,
        end=end,
        limit=limit,
        offset=offset,
    )
