"""Issuing, listing, revoking and checking API keys."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.auth import keys
from services.auth.models import ApiKeyCreate, ApiKeyRead, IssuedKey, Principal, Scope

log = logging.getLogger(__name__)

_COLUMNS = "key_id, name, scopes, device_id, created_at, created_by, revoked_at, revoked_by"

Conn = AsyncConnection[tuple[object, ...]]


async def issue(conn: Conn, *, request: ApiKeyCreate, by: str) -> IssuedKey:
    """A new key; its full value is in the answer and nowhere else."""
    key_id, raw = keys.generate()
    secret = keys.parse(raw)
    assert secret is not None  # generate() makes keys parse() accepts
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"INSERT INTO api_keys (key_id, secret_hash, name, scopes, device_id, created_by) "
            f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (
                key_id,
                keys.secret_hash(secret.secret),
                request.name,
                sorted({s.value for s in request.scopes}),
                request.device_id,
                by,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return IssuedKey(**row, key=raw)


async def list_(conn: Conn, *, include_revoked: bool = True) -> list[ApiKeyRead]:
    """Every key, newest first."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at DESC")
        return [ApiKeyRead.model_validate(r) for r in await cur.fetchall()]


async def revoke(conn: Conn, *, key_id: str, by: str) -> ApiKeyRead | None:
    """Revoke a key (idempotent: the first revocation's time and author stay); None if unknown."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), "
            f"revoked_by = coalesce(revoked_by, %s) WHERE key_id = %s RETURNING {_COLUMNS}",
            (by, key_id),
        )
        row = await cur.fetchone()
    return ApiKeyRead.model_validate(row) if row else None


def issue_sync(url: str, *, request: ApiKeyCreate, by: str, replace: bool = False) -> IssuedKey:
    """Issue a key from synchronous code (the local stack, tests); with ``replace``, first
    revoke the active keys of the same name (a fresh demo key per start, not a pile)."""
    import asyncio

    async def run() -> IssuedKey:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            if replace:
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = now(), revoked_by = %s "
                    "WHERE name = %s AND revoked_at IS NULL",
                    (by, request.name),
                )
            return await issue(conn, request=request, by=by)

    return asyncio.run(run())


@dataclass(frozen=True, slots=True)
class _Entry:
    stored_hash: bytes | None  # None: no such key, or revoked
    principal: Principal | None
    expires: float


class KeyStore:
    """Checks presented keys against PostgreSQL, remembering answers for ``ttl`` seconds so a
    hot ingest path does not query per request. A revocation takes effect within ``ttl``."""

    def __init__(self, pool: AsyncConnectionPool, *, ttl: float = 5.0, max_entries: int = 100_000):
        self.pool = pool
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, _Entry] = {}

    async def authenticate(self, raw: str) -> Principal | None:
        """The caller a key names, None when it is malformed, unknown, revoked or wrong."""
        parsed = keys.parse(raw)
        if parsed is None:
            return None
        now = time.monotonic()
        entry = self._cache.get(parsed.key_id)
        if entry is None or entry.expires <= now:
            try:
                entry = await self._load(parsed.key_id, now)
            except (psycopg.OperationalError, PoolTimeout):
                # The database is away: a key checked before keeps working meanwhile, so a
                # short outage does not stop devices; an unknown one cannot be checked.
                if entry is None:
                    raise
                log.warning("key store unavailable; using the last answer for %s", parsed.key_id)
        if entry.stored_hash is None or not keys.matches(parsed.secret, entry.stored_hash):
            return None
        return entry.principal

    async def _load(self, key_id: str, now: float) -> _Entry:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT key_id, secret_hash, name, scopes, device_id FROM api_keys "
                "WHERE key_id = %s AND revoked_at IS NULL",
                (key_id,),
            )
            row = await cur.fetchone()
        if row is None:
            entry = _Entry(None, None, now + self.ttl)
        else:
            principal = Principal(
                key_id=row["key_id"],
                name=row["name"],
                scopes=frozenset(Scope(s) for s in row["scopes"]),
                device_id=row["device_id"],
            )
            entry = _Entry(bytes(row["secret_hash"]), principal, now + self.ttl)
        if len(self._cache) >= self.max_entries:
            # Bounded memory under a flood of made-up key ids: start over rather than grow.
            self._cache.clear()
        self._cache[key_id] = entry
        return entry
