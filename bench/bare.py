"""The reference for HTTP ingest: bare uvicorn endpoints that parse the same bodies (a JSON
batch of readings, an Open311 form) and answer, with no validation and no broker. Run by
bench.pipeline and bench.ingest in a process of their own."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def readings(request: Request) -> Response:
    items = orjson.loads(await request.body())
    return Response(
        orjson.dumps({"accepted": len(items), "rejected": []}),
        status_code=202,
        media_type="application/json",
    )


async def open311(request: Request) -> Response:
    """Parse the form as Open311's endpoint must, file nothing."""
    form = parse_qs((await request.body()).decode())
    return Response(
        orjson.dumps([{"service_request_id": str(uuid.uuid4()), "fields": len(form)}]),
        status_code=201,
        media_type="application/json",
    )


app = Starlette(
    routes=[
        Route("/api/v1/readings", readings, methods=["POST"]),
        Route("/open311/v2/requests.json", open311, methods=["POST"]),
    ]
)
