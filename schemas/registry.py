"""The contracts that get a committed JSON Schema, and the generator that writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from schemas.alerts import AlertTransition
from schemas.deadletter import DeadLetter
from schemas.indicator_values import IndicatorValue
from schemas.readings import READING_FRAME, SensorReading
from schemas.rollup import SourceMark, WindowPartial
from schemas.tickets import HotlineTicket

SCHEMA_DIR = Path(__file__).parent / "jsonschema"

# file stem -> model; the stem carries the topic version so a breaking change is a new file.
CONTRACTS: dict[str, type[BaseModel] | TypeAdapter[Any]] = {
    "reading.v1": SensorReading,
    "reading_frame.v2": READING_FRAME,
    "ticket.v1": HotlineTicket,
    "alert_transition.v1": AlertTransition,
    "indicator_value.v1": IndicatorValue,
    "deadletter.v1": DeadLetter,
    "rollup_partial.v1": WindowPartial,
    "rollup_mark.v1": SourceMark,
}


def render(model: type[BaseModel] | TypeAdapter[Any]) -> str:
    """The JSON Schema text committed for a model (or a plain-data contract's adapter)."""
    schema = model.json_schema() if isinstance(model, TypeAdapter) else model.model_json_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def drifted(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schema files that differ from what the models generate now."""
    out = []
    for stem, model in CONTRACTS.items():
        path = directory / f"{stem}.schema.json"
        if not path.exists() or path.read_text(encoding="utf-8") != render(model):
            out.append(path.name)
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate every schema file."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, model in CONTRACTS.items():
        path = directory / f"{stem}.schema.json"
        path.write_text(render(model), encoding="utf-8")
        paths.append(path)
    return paths
