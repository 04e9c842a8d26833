"""Pure batch validation: raw JSON items in, accepted readings and per-item reasons out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.base import describe_errors
from schemas.readings import SensorReading


class MalformedBatch(ValueError):
    """The body as a whole cannot be read as a batch of readings."""


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: str
    item: Any


@dataclass(slots=True)
class Sorted:
    accepted: list[SensorReading] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_body(body: bytes, *, max_items: int) -> list[Any]:
    """The items of a batch body: a JSON array, or an object with a ``readings`` array."""
    if not body.strip():
        raise MalformedBatch("empty body: expected a JSON array of readings")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBatch(f"body is not valid JSON: {exc}") from exc
    if isinstance(document, dict):
        if set(document) != {"readings"}:
            raise MalformedBatch('expected a JSON array, or an object with only a "readings" key')
        document = document["readings"]
    if not isinstance(document, list):
        raise MalformedBatch(f"expected a JSON array of readings, got {type(document).__name__}")
    if not document:
        raise MalformedBatch("the batch holds no readings")
    if len(document) > max_items:
        raise MalformedBatch(f"batch of {len(document)} readings exceeds the limit of {max_items}")
    return document


def sort_items(items: list[Any]) -> Sorted:
    """Validate each item on its own, so one bad reading does not sink the batch."""
    out = Sorted()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            out.rejected.append(
                Rejection(index, f"expected an object, got {type(item).__name__}", item)
            )
            continue
        try:
            out.accepted.append(SensorReading.model_validate(item))
        except ValidationError as exc:
            out.rejected.append(Rejection(index, describe_errors(exc), item))
    return out
