"""Open311 GeoReport v2 for 12345 tickets, at ``/open311/v2`` on the ingest service.

Standard field names and error format (a list of ``{code, description}``), so existing Open311
clients work unchanged. Extensions: ``extended_attributes`` on each request carries the loop's
finer stage beside the standard open/closed status, the place, and the caller (masked unless
the key holds ``pii:read``); ``page``/``page_size`` page ``GET requests.json``.

A POST answers once the ticket is on the Kafka tickets topic; the storage writer then puts it
in PostgreSQL, where ``GET`` reads it. The id is known at once, so no Open311 token is used;
a GET in the first moment after the POST may not find the request yet.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, ValidationError

from ingest.gateway import BrokerUnavailable, Gateway
from ingest.taxonomy import taxonomy
from schemas.base import describe_errors, utcnow
from schemas.tickets import Channel, HotlineTicket
from services.api.deps import ConnDep
from services.auth.deps import presented_key
from services.auth.models import Principal, Scope
from services.auth.service import KeyStore
from services.kafka import encode
from services.tickets import service
from services.tickets.privacy import mask_name, mask_phone

BASE = "/open311/v2"
router = APIRouter(prefix=BASE, tags=["open311"])

MAX_PAGE_SIZE = 1000
DEFAULT_WINDOW = timedelta(days=90)


class Open311Error(Exception):
    """An error answered in Open311's format."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def error_response(code: int, description: str) -> JSONResponse:
    return JSONResponse(status_code=code, content=[{"code": code, "description": description}])


async def caller(request: Request, api_key: str | None) -> Principal | None:
    """Who calls: a key sent as Open311's ``api_key`` field or in the usual headers."""
    raw = api_key or presented_key(request)
    if raw is None:
        return None
    store: KeyStore = request.app.state.keys
    principal = await store.authenticate(raw)
    if principal is None:
        raise Open311Error(401, "api_key is malformed, unknown or revoked")
    return principal


@router.get("/services.json", summary="Open311: the service (category) list")
async def services() -> list[dict[str, Any]]:
    """Every 12345 subcategory as an Open311 service; ``group`` is its category."""
    return [
        {
            "service_code": s.code,
            "service_name": s.name_zh,
            "description": f"{c.name_zh} / {s.name_zh} ({s.name_en})",
            "metadata": False,
            "type": "realtime",
            "keywords": ",".join([c.name_en, s.name_en]),
            "group": c.name_zh,
        }
        for c in taxonomy().categories
        for s in c.services
    ]


@router.get("/services/{service_code}.json", summary="Open311: one service's definition")
async def service_definition(service_code: str) -> dict[str, Any]:
    """The service's extra attributes (none here: every service takes the standard fields)
    and, as an extension, the department it usually goes to."""
    found = taxonomy().service(service_code)
    if found is None:
        raise Open311Error(404, f"unknown service_code {service_code!r} (see services.json)")
    category, svc = found
    return {
        "service_code": svc.code,
        "attributes": [],
        "department": svc.department or category.department,
    }


def _first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0].strip() if values and values[0].strip() else None


def _number(form: dict[str, list[str]], name: str) -> float | None:
    value = _first(form, name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise Open311Error(400, f"{name} must be a number, got {value!r}") from None


async def _form(request: Request) -> dict[str, list[str]]:
    """The POST fields, form-encoded (what Open311 clients send) or JSON."""
    body = await request.body()
    if len(body) > 64 * 1024:
        raise Open311Error(413, "the request is larger than 64 KiB")
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Open311Error(400, f"body is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise Open311Error(400, "expected a JSON object of Open311 fields")
        return {k: [str(v)] for k, v in document.items() if v is not None}
    try:
        return parse_qs(body.decode(), keep_blank_values=False, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise Open311Error(400, "the form is not UTF-8") from exc


def ticket_from_form(form: dict[str, list[str]], now: datetime) -> HotlineTicket:
    """A ticket from Open311 POST fields (raises Open311Error with the reason)."""
    code = _first(form, "service_code")
    if code is None:
        raise Open311Error(400, "service_code is required (see services.json)")
    found = taxonomy().service(code)
    if found is None:
        raise Open311Error(404, f"unknown service_code {code!r} (see services.json)")
    _, svc = found
    lat, lon = _number(form, "lat"), _number(form, "long")
    address = _first(form, "address_string") or _first(form, "address_id")
    if (lat is None or lon is None) and address is None:
        raise Open311Error(400, "a location is required: lat and long, or address_string")
    parts = [p for p in (_first(form, "last_name"), _first(form, "first_name")) if p]
    # Chinese names run family name first with no space (张三丰); Latin ones take a space.
    name = ("" if all(not p.isascii() for p in parts) else " ").join(parts)
    district = _first(form, "attribute[district]") or _first(form, "district")
    try:
        return HotlineTicket.model_validate(
            {
                "ticket_id": uuid.uuid4(),
                "category": code,
                "description": _first(form, "description") or svc.name_zh,
                "reported_at": now,
                "location": {"lat": lat, "lon": lon, "district": district},
                "urgent": svc.urgent,
                "caller": {"name": name or None, "phone": _first(form, "phone")},
                "address": address,
                "media_url": _first(form, "media_url"),
                "channel": Channel.OPEN311,
            }
        )
    except ValidationError as exc:
        raise Open311Error(400, describe_errors(exc)) from exc


async def publish_tickets(gateway: Gateway, tickets: list[HotlineTicket]) -> None:
    """Hand tickets to the broker and wait for its acknowledgement, or raise."""
    try:
        sends = [
            await gateway.producer.send(gateway.topics.tickets, encode(t), key=t.key)
            for t in tickets
        ]
        for send in sends:
            await send
    except KafkaError as exc:
        raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc


@router.post("/requests.json", status_code=201, summary="Open311: file a service request")
async def post_request(request: Request) -> list[dict[str, Any]]:
    """Form-encoded (or JSON) Open311 fields; needs an ``api_key`` with ``tickets:write``."""
    form = await _form(request)
    principal = await caller(request, _first(form, "api_key"))
    if principal is None:
        raise Open311Error(401, "api_key is required to file a request")
    if not principal.allows(Scope.TICKETS_WRITE):
        raise Open311Error(403, "this api_key may not file requests (needs tickets:write)")
    ticket = ticket_from_form(form, utcnow())
    gateway: Gateway = request.app.state.gateway
    await publish_tickets(gateway, [ticket])
    return [
        {
            "service_request_id": str(ticket.ticket_id),
            "service_notice": "已受理 / received",
            "account_id": None,
        }
    ]


def as_open311(row: dict[str, Any], *, see_caller: bool) -> dict[str, Any]:
    """A stored ticket in Open311's shape, the caller masked unless ``see_caller``."""
    found = taxonomy().service(row["category"])
    category, svc = found if found else (None, None)
    name, phone = row["caller_name"], row["caller_phone"]
    return {
        "service_request_id": str(row["ticket_id"]),
        "status": row["status"],
        "status_notes": None,
        "service_name": svc.name_zh if svc else row["category"],
        "service_code": row["category"],
        "description": row["description"],
        "agency_responsible": (svc.department if svc and svc.department else None)
        or (category.department if category else None),
        "service_notice": None,
        "requested_datetime": row["reported_at"].isoformat(),
        "updated_datetime": row["updated_at"].isoformat(),
        "expected_datetime": None,
        "address": row["address"],
        "address_id": None,
        "zipcode": None,
        "lat": row["lat"],
        "long": row["lon"],
        "media_url": row["media_url"],
        "extended_attributes": {
            "stage": row["stage"],
            "urgent": row["urgent"],
            "channel": row["channel"],
            "district": row["district"],
            "street": row["street"],
            "grid": row["grid"],
            "caller": {
                "name": name if see_caller else mask_name(name),
                "phone": phone if see_caller else mask_phone(phone),
                "masked": not see_caller,
            },
        },
    }


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@router.get("/requests.json", summary="Open311: search service requests")
async def get_requests(
    request: Request,
    conn: ConnDep,
    service_request_id: str | None = None,
    service_code: str | None = None,
    start_date: AwareDatetime | None = None,
    end_date: AwareDatetime | None = None,
    status: str | None = None,
    api_key: str | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> list[dict[str, Any]]:
    """Requests, newest first. Without dates, the last 90 days. Comma-separated lists for
    ``service_request_id``, ``service_code`` and ``status`` (open, closed)."""
    principal = await caller(request, api_key)
    ids = None
    if service_request_id is not None:
        try:
            ids = [uuid.UUID(v) for v in _csv(service_request_id) or []]
        except ValueError as exc:
            raise Open311Error(400, "service_request_id must be request ids") from exc
    statuses = _csv(status)
    if statuses and not set(statuses) <= {"open", "closed"}:
        raise Open311Error(400, "status must be open or closed")
    if start_date and end_date and end_date <= start_date:
        raise Open311Error(400, "end_date must be after start_date")
    if ids is None and start_date is None and end_date is None:
        start_date = utcnow() - DEFAULT_WINDOW
    rows = await service.list_(
        conn,
        where=service.TicketFilter(
            ids=ids,
            categories=_csv(service_code),
            statuses=statuses,
            start=start_date,
            end=end_date,
        ),
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    see = principal is not None and principal.allows(Scope.PII_READ)
    return [as_open311(r, see_caller=see) for r in rows]


@router.get("/requests/{request_id}.json", summary="Open311: one service request")
async def get_request(
    request: Request, conn: ConnDep, request_id: str, api_key: str | None = None
) -> list[dict[str, Any]]:
    """One request, as a one-element list (the Open311 convention)."""
    principal = await caller(request, api_key)
    try:
        ticket_id = uuid.UUID(request_id)
    except ValueError as exc:
        raise Open311Error(404, f"no service request {request_id!r}") from exc
    rows = await service.list_(conn, where=service.TicketFilter(ids=[ticket_id]), limit=1, offset=0)
    if not rows:
        raise Open311Error(404, f"no service request {request_id!r}")
    see = principal is not None and principal.allows(Scope.PII_READ)
    return [as_open311(rows[0], see_caller=see)]
