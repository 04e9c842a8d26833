"""Device lists from files (JSON array or CSV), checked row by row."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import orjson
from pydantic import ValidationError

from schemas.base import describe_errors
from services.devices.models import DeviceUpsert

_NUMBERS = ("lon", "lat")


def read_devices(path: Path) -> list[DeviceUpsert]:
    """Devices from a file; a ValueError names every bad row and why."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows: list[object] = []
        for row in csv.DictReader(io.StringIO(text)):
            clean: dict[str, object] = {k: v for k, v in row.items() if k and v not in (None, "")}
            for key in _NUMBERS:
                if key in clean:
                    # Left as text if it is no number: validation then names the row.
                    with contextlib.suppress(ValueError):
                        clean[key] = float(str(clean[key]))
            rows.append(clean)
    else:
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(document, list):
            raise ValueError(f"{path}: expected a JSON array of devices")
        rows = document
    devices: list[DeviceUpsert] = []
    errors: list[str] = []
    for number, item in enumerate(rows, start=1):
        try:
            devices.append(DeviceUpsert.model_validate(item))
        except ValidationError as exc:
            errors.append(f"row {number}: {describe_errors(exc)}")
    if errors:
        raise ValueError(
            f"{path}: {len(errors)} bad rows, nothing registered\n" + "\n".join(errors)
        )
    return devices
