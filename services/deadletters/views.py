"""Dead-letter endpoints on the ingest service (administrators only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime

from ingest.gateway import Gateway
from services.api.deps import MAX_PAGE_SIZE, ConnDep
from services.auth.deps import AdminDep
from services.deadletters import flows, service
from services.deadletters.models import LetterPage, ReplayRequest, ReplayResult

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.get("", response_model=LetterPage, summary="List dead letters")
async def list_letters(
    conn: ConnDep,
    admin: AdminDep,
    source: Annotated[str | None, Query(max_length=64)] = None,
    since: AwareDatetime | None = None,
    replayed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> LetterPage:
    """Every refused record with its source, payload and reason, newest first."""
    return await service.list_(
        conn, source=source, since=since, replayed=replayed, limit=limit, offset=offset
    )


@router.post("/replay", response_model=ReplayResult, summary="Replay dead letters")
async def replay_letters(
    conn: ConnDep,
    admin: AdminDep,
    body: ReplayRequest,
    gateway: Annotated[Gateway, Depends(_gateway)],
) -> ReplayResult:
    """Put each letter's payload through today's checks again; what passes goes onto its
    topic (readings already accepted count as duplicates), and each letter records what
    happened. 503 if the broker cannot take it."""
    return await flows.replay(conn, gateway, letter_ids=body.letter_ids, by=f"key:{admin.key_id}")
