"""Dependencies injected into the HTTP services' views (the API's and ingest's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from rules.indicators import Catalogue
from services.config import Settings


# The lookups are async: FastAPI runs a plain function dependency in its thread pool, a hop
# to another thread and back for each request (~5% of ingest's CPU at 100,000 readings/s).
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


async def get_conn(request: Request) -> AsyncIterator[AsyncConnection[tuple[object, ...]]]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


# Every list endpoint pages at most this many items (stated in the OpenAPI document).
MAX_PAGE_SIZE = 1000

SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogueDep = Annotated[Catalogue, Depends(get_catalogue)]
ConnDep = Annotated[AsyncConnection[tuple[object, ...]], Depends(get_conn)]
