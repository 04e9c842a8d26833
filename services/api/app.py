"""The platform API: alerts and readings for the screens, with its OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from rules.indicators import Catalogue
from services.alerts.views import router as alerts_router
from services.api.deps import ConnDep
from services.auth.service import KeyStore
from services.auth.views import router as keys_router
from services.config import Settings
from services.db import make_pool
from services.devices.views import router as devices_router
from services.history.views import router as history_router
from services.indicators.views import router as indicators_router
from services.readings.views import router as readings_router


def create_app(settings: Settings) -> FastAPI:
    """The API application; the database pool opens with the app and closes with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = make_pool(settings.db)
        # Serve even while the database is away: requests then get 503, not a refused socket.
        await pool.open(wait=False)
        app.state.pool = pool
        app.state.keys = KeyStore(pool, ttl=settings.auth.key_cache_seconds)
        try:
            yield
        finally:
            await pool.close()

    # Docs assets served by us, not a CDN: operations-centre networks are often closed.
    app = FastAPIOffline(
        title="city-vitals API",
        version="1",
        summary="The city's vital signs and alerts, for the big, mid and small screens.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Indicator definitions come from the catalogue file for now; one place to change when
    # definitions move into the database.
    app.state.catalogue = Catalogue.from_yaml(settings.rules.catalogue)

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: object, exc: psycopg.OperationalError) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": "the database is unavailable, retry later"},
            headers={"Retry-After": "5"},
        )

    @app.get("/health", tags=["health"])
    async def health(conn: ConnDep) -> dict[str, str]:
        await conn.execute("SELECT 1")
        return {"status": "ok", "database": "ok"}

    app.include_router(alerts_router)
    app.include_router(readings_router)
    app.include_router(history_router)
    app.include_router(devices_router)
    app.include_router(keys_router)
    app.include_router(indicators_router)
    return app
