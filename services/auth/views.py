"""Key administration endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from services.api.deps import ConnDep
from services.auth import service
from services.auth.deps import AdminDep
from services.auth.models import ApiKeyCreate, ApiKeyRead, IssuedKey

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])

KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


@router.post("", status_code=201, response_model=IssuedKey, summary="Issue an API key")
async def issue_key(conn: ConnDep, admin: AdminDep, body: ApiKeyCreate) -> IssuedKey:
    """A new key with the given scopes; the full key is shown in this answer only."""
    return await service.issue(conn, request=body, by=f"key:{admin.key_id}")


@router.get("", response_model=list[ApiKeyRead], summary="List API keys")
async def list_keys(
    conn: ConnDep, admin: AdminDep, include_revoked: bool = True
) -> list[ApiKeyRead]:
    """Every key (never their secrets), newest first."""
    return await service.list_(conn, include_revoked=include_revoked)


@router.delete(
    "/{key_id}",
    response_model=ApiKeyRead,
    summary="Revoke an API key",
    responses={404: {"description": "No such key."}},
)
async def revoke_key(conn: ConnDep, admin: AdminDep, key_id: KeyIdPath) -> ApiKeyRead:
    """Revoke a key; callers using it are refused within seconds."""
    revoked = await service.revoke(conn, key_id=key_id, by=f"key:{admin.key_id}")
    if revoked is None:
        raise HTTPException(404, f"no key {key_id}")
    return revoked
