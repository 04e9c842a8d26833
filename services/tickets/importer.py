"""Bulk import of tickets exported by an existing hotline system (CSV or JSON lines). Pure.

Columns (CSV header or JSON keys): external_id, category, description, reported_at, and
optionally district, street, grid, address, lat, lon, urgent, caller_name, caller_phone,
media_url. ``category`` is a service code of the taxonomy. The ticket id derives from the
external id, so importing the same export twice files each ticket once.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from ingest.taxonomy import taxonomy
from schemas.tickets import Channel, HotlineTicket

_IMPORT_NS = uuid.UUID("0f6c8b1e-5a3d-4f7e-9c2b-8d1e4a6f3b20")
MAX_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class RowError:
    row: int  # 1-based data row (the CSV header is not counted)
    field: str
    reason: str


@dataclass(slots=True)
class ImportBatch:
    tickets: list[HotlineTicket] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def ticket_id_for(external_id: str) -> uuid.UUID:
    return uuid.uuid5(_IMPORT_NS, external_id)


def _rows(text: str, *, ndjson: bool) -> list[tuple[int, dict[str, Any] | str]]:
    """Numbered rows: a mapping, or the reason the row could not be read at all."""
    out: list[tuple[int, dict[str, Any] | str]] = []
    if ndjson:
        number = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            number += 1
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                out.append((number, f"not valid JSON: {exc}"))
                continue
            out.append((number, item if isinstance(item, dict) else "expected a JSON object"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        for number, row in enumerate(reader, start=1):
            if None in row:
                out.append((number, "more values than the header has columns"))
                continue
            out.append((number, {k: v for k, v in row.items() if k and v not in (None, "")}))
    if len(out) > MAX_ROWS:
        raise ValueError(f"{len(out)} rows exceed the limit of {MAX_ROWS} per import")
    return out


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # validation names the field
    return value


def parse(text: str, *, ndjson: bool) -> ImportBatch:
    """Tickets from an export, and every row that is refused with its field and reason."""
    out = ImportBatch()
    for number, row in _rows(text, ndjson=ndjson):
        if isinstance(row, str):
            out.errors.append(RowError(number, "row", row))
            continue
        external = row.get("external_id")
        if not external:
            out.errors.append(RowError(number, "external_id", "required"))
            continue
        category = str(row.get("category", ""))
        found = taxonomy().service(category)
        if found is None:
            out.errors.append(RowError(number, "category", f"unknown service code {category!r}"))
            continue
        urgent = row.get("urgent", found[1].urgent)
        if isinstance(urgent, str):
            urgent = urgent.strip().lower() in {"1", "true", "yes", "是"}
        try:
            ticket = HotlineTicket.model_validate(
                {
                    "ticket_id": ticket_id_for(str(external)),
                    "external_id": str(external),
                    "category": category,
                    "description": row.get("description"),
                    "reported_at": row.get("reported_at"),
                    "urgent": urgent,
                    "address": row.get("address"),
                    "media_url": row.get("media_url"),
                    "location": {
                        "district": row.get("district"),
                        "street": row.get("street"),
                        "grid": row.get("grid"),
                        "lat": _number(row.get("lat")),
                        "lon": _number(row.get("lon")),
                    },
                    "caller": {"name": row.get("caller_name"), "phone": row.get("caller_phone")},
                    "channel": Channel.IMPORT,
                }
            )
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "row"
                out.errors.append(RowError(number, where, err["msg"]))
            continue
        out.tickets.append(ticket)
    return out
