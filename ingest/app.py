"""The ingest service: device and gateway batches in, validated readings onto Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from psycopg_pool import PoolTimeout
from pydantic import Field
from pydantic.json_schema import models_json_schema

from ingest.batch import FRAME_TYPE, MalformedBatch, latest_allowed
from ingest.gateway import BrokerUnavailable, Gateway
from ingest.registry import DeviceRegistry, RegistryUnavailable, check_devices
from ingest.sorting import Sorter, SorterUnavailable
from schemas.base import Contract, utcnow
from schemas.readings import READING_FRAME, SensorReading
from services.api.deps import SettingsDep
from services.auth.deps import require
from services.auth.models import Principal, Scope
from services.auth.service import KeyStore
from services.config import Settings
from services.db import make_pool
from services.deadletters.views import router as dead_letters_router
from services.kafka import dead_letter, make_producer, wait_for_broker
from services.tickets import open311
from services.tickets.views import router as tickets_router

log = logging.getLogger(__name__)

SOURCE = "ingest.http.readings"


class ItemRejection(Contract):
    index: int = Field(description="Position of the item in the submitted batch.")
    reason: str


class IngestResult(Contract):
    accepted: int = Field(description="Readings now durably on the readings topic.")
    duplicates: int = Field(
        default=0,
        description="Readings whose id was already accepted (a retried batch): not sent again.",
    )
    rejected: list[ItemRejection] = Field(description="Items refused, each with why.")


class Problem(Contract):
    detail: str


def readings_body(max_items: int) -> dict[str, Any]:
    """OpenAPI request body of the batch endpoint. The body is read raw (bad items are
    dead-lettered one by one, not refused wholesale by the framework), so its schema is
    stated here rather than derived from a parameter."""
    items = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/SensorReading"},
        "minItems": 1,
        "maxItems": max_items,
    }
    envelope = {
        "type": "object",
        "properties": {"readings": items},
        "required": ["readings"],
        "additionalProperties": False,
    }
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [items, envelope]}},
            # One reading per line; a line that is not JSON is refused on its own.
            "application/x-ndjson": {"schema": {"type": "string"}},
            FRAME_TYPE: {"schema": {"$ref": "#/components/schemas/ReadingFrame"}},
        },
    }


def _openapi_with_contracts(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the reading contract the raw body refers to."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        ref = "#/components/schemas/{model}"
        _, defs = models_json_schema([(SensorReading, "validation")], ref_template=ref)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs["$defs"])
        frame = READING_FRAME.json_schema(ref_template=ref)
        schemas.update(frame.pop("$defs", {}))
        schemas["ReadingFrame"] = frame
        app.openapi_schema = document
    return app.openapi_schema


async def get_gateway(request: Request) -> Gateway:  # async: no thread-pool hop
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
ReadingsWriterDep = Annotated[Principal, Depends(require(Scope.READINGS_WRITE))]


def create_app(settings: Settings) -> FastAPI:
    """The ingest HTTP application."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await wait_for_broker(settings.kafka)
        producer = make_producer(settings.kafka)
        await producer.start()
        pool = make_pool(settings.db)
        # API keys live in PostgreSQL; serve while it is away (checks then answer 503).
        await pool.open(wait=False)
        app.state.pool = pool
        app.state.keys = KeyStore(pool, ttl=settings.auth.key_cache_seconds)
        app.state.gateway = Gateway(settings, producer)
        sorter = Sorter(settings.ingest.sort_processes)
        await sorter.start()
        app.state.sorter = sorter
        registry = DeviceRegistry(pool, interval=settings.ingest.registry_refresh_seconds)
        app.state.registry = registry
        refreshing = asyncio.create_task(registry.run())
        try:
            yield
        finally:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
            await producer.stop()
            await pool.close()
            await asyncio.to_thread(sorter.stop)

    # Docs assets served by us, not a CDN: operations-centre networks are often closed.
    app = FastAPIOffline(
        title="city-vitals ingest",
        version="1",
        summary="Readings from IoT devices and gateways onto the city's Kafka topics.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.openapi = lambda: _openapi_with_contracts(app)  # type: ignore[method-assign]

    def unavailable(request: Request, reason: str) -> JSONResponse:
        """503 with Retry-After, in Open311's error format on its paths."""
        retry = {"Retry-After": str(settings.ingest.retry_after_seconds)}
        if request.url.path.startswith(open311.BASE):
            response = open311.error_response(503, reason)
            response.headers.update(retry)
            return response
        return JSONResponse(status_code=503, content={"detail": reason}, headers=retry)

    @app.exception_handler(BrokerUnavailable)
    async def _broker_down(request: Request, exc: BrokerUnavailable) -> JSONResponse:
        log.warning("broker unavailable, answering 503: %s", exc)
        return unavailable(
            request,
            f"the message broker cannot take data now ({exc}); "
            "nothing from this request was accepted, retry later",
        )

    @app.exception_handler(SorterUnavailable)
    async def _sorter_died(request: Request, exc: SorterUnavailable) -> JSONResponse:
        return unavailable(request, f"{exc}; nothing from this request was accepted, retry later")

    @app.exception_handler(RegistryUnavailable)
    async def _registry_down(request: Request, exc: RegistryUnavailable) -> JSONResponse:
        return unavailable(request, f"{exc}; nothing from this request was accepted, retry later")

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable, answering 503: %s", exc)
        return unavailable(request, "the database is unavailable; retry later")

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/api/v1/readings",
        status_code=202,
        response_model=IngestResult,
        tags=["readings"],
        summary="Submit a batch of sensor readings",
        responses={
            400: {"model": Problem, "description": "The body is not a batch of readings."},
            401: {"model": Problem, "description": "No valid API key."},
            403: {"model": Problem, "description": "The key may not send readings."},
            413: {"model": Problem, "description": "The body is too large."},
            422: {"model": IngestResult, "description": "No item of the batch was valid."},
            503: {"model": Problem, "description": "The broker cannot take data; retry later."},
        },
        openapi_extra={"requestBody": readings_body(settings.ingest.max_batch_items)},
    )
    async def post_readings(
        request: Request, gateway: GatewayDep, settings: SettingsDep, caller: ReadingsWriterDep
    ) -> JSONResponse:
        """Validate each reading; put the valid ones on Kafka and say why the others were not.

        Needs an API key with the ``readings:write`` scope (``Authorization: Bearer <key>``);
        a key bound to a device sends only that device's readings. The body is a JSON array,
        ``{"readings": [...]}``, NDJSON (``content-type: application/x-ndjson``), or a frame
        (``content-type: application/vnd.city-vitals.frame+json``): many readings column by
        column, as the readings topic carries them, the cheapest form for a gateway; its
        readings are counted, and refused, by their position in the columns.
        202 means every accepted reading is acknowledged by the broker; readings whose id was
        accepted before (a retried batch) are counted as duplicates and not sent again.
        Rejected items go to the dead-letter topic with their reason.
        """
        limit = settings.ingest.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
        kind = request.headers.get("content-type", "")
        sorter: Sorter = request.app.state.sorter
        try:
            result = await sorter.sort(
                bytes(body),
                ndjson=kind.startswith("application/x-ndjson"),
                frame=kind.startswith(FRAME_TYPE),
                max_items=settings.ingest.max_batch_items,
                only_device=caller.device_id,
                not_after=latest_allowed(settings.ingest.max_future_seconds, utcnow()),
            )
        except MalformedBatch as exc:
            await gateway.publish([], [dead_letter(SOURCE, str(exc), bytes(body))])
            raise HTTPException(400, str(exc)) from exc
        if settings.ingest.require_registered_devices:
            registry: DeviceRegistry = request.app.state.registry
            result = check_devices(result, registry.current())
        letters = [
            dead_letter(SOURCE, f"item {r.index}: {r.reason}", orjson.dumps(r.item))
            for r in result.rejected
        ]
        sent = await gateway.accept(result.accepted, letters)
        answer = IngestResult(
            accepted=len(sent),
            duplicates=len(result.accepted) - len(sent),
            rejected=[ItemRejection(index=r.index, reason=r.reason) for r in result.rejected],
        )
        return JSONResponse(
            status_code=202 if result.accepted else 422,
            content=answer.model_dump(mode="json"),
        )

    app.include_router(dead_letters_router)
    app.include_router(open311.router)
    app.include_router(tickets_router)

    @app.exception_handler(open311.Open311Error)
    async def _open311_error(request: Request, exc: open311.Open311Error) -> JSONResponse:
        return open311.error_response(exc.code, exc.description)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path.startswith(open311.BASE):
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return open311.error_response(400, reasons)
        return await request_validation_exception_handler(request, exc)

    return app
