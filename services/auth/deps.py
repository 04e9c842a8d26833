"""FastAPI dependencies: who is calling, and may they."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from services.auth.models import Principal, Scope
from services.auth.service import KeyStore

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_key(request: Request) -> str | None:
    """The key sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


async def optional_principal(request: Request) -> Principal | None:
    """The caller when a key was sent (401 if it is not valid), None when none was."""
    raw = presented_key(request)
    if raw is None:
        return None
    store: KeyStore = request.app.state.keys
    principal = await store.authenticate(raw)
    if principal is None:
        raise HTTPException(401, "the API key is malformed, unknown or revoked", _CHALLENGE)
    return principal


def require(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits only callers holding ``scope``."""

    async def check(request: Request) -> Principal:
        principal = await optional_principal(request)
        if principal is None:
            raise HTTPException(
                401, "an API key is required (Authorization: Bearer <key>)", _CHALLENGE
            )
        if not principal.allows(scope):
            raise HTTPException(403, f"this key lacks the scope {scope.value!r}")
        return principal

    return check


OptionalPrincipalDep = Annotated[Principal | None, Depends(optional_principal)]
AdminDep = Annotated[Principal, Depends(require(Scope.ADMIN))]
