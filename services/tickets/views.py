"""Bulk ticket import over HTTP, on the ingest service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ingest.gateway import Gateway
from schemas.base import Contract
from services.auth.deps import require
from services.auth.models import Principal, Scope
from services.tickets.importer import parse
from services.tickets.open311 import publish_tickets

router = APIRouter(prefix="/api/v1/tickets", tags=["tickets"])

MAX_IMPORT_BYTES = 32 * 1024 * 1024


class ImportError_(Contract):
    row: int = Field(description="1-based data row (the CSV header is not counted).")
    field: str
    reason: str


class ImportResult(Contract):
    imported: int = Field(description="Tickets now on the tickets topic (a re-import: again).")
    errors: list[ImportError_]


@router.post(
    "/import",
    response_model=ImportResult,
    summary="Import tickets exported by a hotline system",
    responses={422: {"model": ImportResult, "description": "No row could be imported."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_tickets(
    request: Request,
    principal: Annotated[Principal, Depends(require(Scope.TICKETS_WRITE))],
) -> JSONResponse:
    """CSV (``text/csv``, with a header row) or JSON lines (``application/x-ndjson``); each
    row imported or refused on its own with its row number, field and reason. Tickets keep
    ids derived from their ``external_id``, so importing an export twice files them once."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("text/csv", "application/x-ndjson")):
        raise HTTPException(415, "send text/csv or application/x-ndjson")
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        raise HTTPException(413, f"imports are limited to {MAX_IMPORT_BYTES} bytes")
    try:
        batch = parse(body.decode("utf-8-sig"), ndjson=kind.startswith("application/x-ndjson"))
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "the body is not UTF-8") from exc
    except ValueError as exc:
        raise HTTPException(413, str(exc)) from exc
    gateway: Gateway = request.app.state.gateway
    if batch.tickets:
        await publish_tickets(gateway, batch.tickets)
    result = ImportResult(
        imported=len(batch.tickets),
        errors=[ImportError_(row=e.row, field=e.field, reason=e.reason) for e in batch.errors],
    )
    return JSONResponse(
        status_code=200 if batch.tickets or not batch.errors else 422,
        content=result.model_dump(mode="json"),
    )
