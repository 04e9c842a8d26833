"""Open311 GeoReport v2 at the edge: form or JSON fields in, HotlineTicket out, and stored
rows back out in the standard field names (caller data masked unless allowed). Pure."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from schemas.base import describe_errors
from schemas.tickets import HotlineTicket
from services.tickets.masking import mask_email, mask_name, mask_phone
from services.tickets.taxonomy import Taxonomy

# The closed loop's stages (GB/T 30428 / 12345 practice) and the Open311 status each maps to.
STAGES = {
    "reported": ("open", "受理"),
    "registered": ("open", "立案"),
    "dispatched": ("open", "派遣"),
    "handling": ("open", "处置"),
    "verifying": ("open", "核查"),
    "closed": ("closed", "结案"),
    "rejected": ("closed", "不予立案"),
    "merged": ("closed", "合并"),
}


class Open311Error(Exception):
    """A request Open311 clients get back as ``[{"code": ..., "description": ...}]``."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _coordinate(fields: Mapping[str, Any], name: str) -> float | None:
    value = _text(fields, name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise Open311Error(400, f"{name}: not a number: {value!r}") from None


def ticket_from_fields(
    fields: Mapping[str, Any], taxonomy: Taxonomy, *, now: datetime, ticket_id: uuid.UUID
) -> HotlineTicket:
    """A ticket from the POST fields of a service request (form or JSON), or Open311Error."""
    code = _text(fields, "service_code")
    if code is None:
        raise Open311Error(400, "service_code: required")
    found = taxonomy.find(code)
    if found is None:
        raise Open311Error(404, f"service_code: unknown service {code!r} (see services.json)")
    lat, lon = _coordinate(fields, "lat"), _coordinate(fields, "long")
    address = _text(fields, "address_string")
    if (lat is None or lon is None) and address is None:
        raise Open311Error(400, "a location is required: lat and long, or address_string")
    description = _text(fields, "description")
    if description is None:
        raise Open311Error(400, "description: required")
    names = [n for n in (_text(fields, "last_name"), _text(fields, "first_name")) if n]
    data = {
        "ticket_id": ticket_id,
        "category": code,
        "description": description,
        "reported_at": now,
        "location": {
            "lat": lat,
            "lon": lon,
            "district": _text(fields, "district"),
            "street": _text(fields, "street"),
            "grid": _text(fields, "grid"),
        },
        "urgent": found[1].urgent,
        "caller": {
            # Chinese order: family name first, no space (张 + 三 → 张三).
            "name": "".join(names) or None,
            "phone": _text(fields, "phone"),
            "email": _text(fields, "email"),
        },
        "address": address,
        "media_url": _text(fields, "media_url"),
        "source": "open311",
    }
    try:
        return HotlineTicket.model_validate(data)
    except ValidationError as exc:
        raise Open311Error(400, describe_errors(exc)) from exc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def render(row: Mapping[str, Any], taxonomy: Taxonomy, *, pii: bool) -> dict[str, Any]:
    """One stored ticket as a GeoReport v2 service request."""
    found = taxonomy.find(row["service_code"])
    stage = row["stage"]
    name, phone, email = row["caller_name"], row["caller_phone"], row["caller_email"]
    if not pii:
        name, phone, email = mask_name(name), mask_phone(phone), mask_email(email)
    return {
        "service_request_id": str(row["ticket_id"]),
        "status": row["status"],
        "status_notes": None,
        "service_name": found[1].name if found else None,
        "service_code": row["service_code"],
        "description": row["description"],
        "agency_responsible": row["department"],
        "service_notice": None,
        "requested_datetime": _iso(row["reported_at"]),
        "updated_datetime": _iso(row["updated_at"]),
        "expected_datetime": None,
        "address": row["address"],
        "address_id": None,
        "zipcode": None,
        "lat": row["lat"],
        "long": row["lon"],
        "media_url": row["media_url"],
        # Extension beside the standard fields: the closed loop's finer stage, the place in
        # the city's grid hierarchy, and the caller (masked unless the key holds pii:read).
        "extended_attributes": {
            "stage": stage,
            "stage_name": STAGES.get(stage, ("open", stage))[1],
            "urgent": row["urgent"],
            "district": row["district"],
            "street": row["street"],
            "grid": row["grid"],
            "source": row["source"],
            "caller": {"name": name, "phone": phone, "email": email},
        },
    }
