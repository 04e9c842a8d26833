"""The reference for HTTP ingest: a bare uvicorn endpoint that parses the same JSON body and
answers 202, with no validation and no broker. Run by bench.pipeline in its own process."""

from __future__ import annotations

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


app = Starlette(routes=[Route("/api/v1/readings", readings, methods=["POST"])])
