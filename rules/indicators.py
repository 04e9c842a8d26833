"""Vital-sign indicator definitions (城市运行数字体征) and the catalogue that holds them.

Pure: no I/O beyond reading a YAML file handed in by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, model_validator

from schemas.alerts import Level, ScopeLevel
from schemas.base import Code, Contract


class Domain(StrEnum):
    TRAFFIC = "traffic"  # 交通
    WATER = "water"  # 水务
    ENVIRONMENT = "environment"  # 环境
    SAFETY = "safety"  # 安全/应急
    CITY_MANAGEMENT = "city_management"  # 城管
    HOTLINE = "hotline"  # 民生/12345
    ENERGY = "energy"  # 能源


class Direction(StrEnum):
    ABOVE = "above"  # breach when the value rises to a threshold (积水深度)
    BELOW = "below"  # breach when the value falls to a threshold (道路车速)


class Thresholds(Contract):
    """Threshold per warning level; a level left out is not used by this indicator."""

    blue: float | None = None
    yellow: float | None = None
    orange: float | None = None
    red: float | None = None

    def defined(self) -> list[tuple[Level, float]]:
        """(level, threshold) pairs that are set, lowest level first."""
        pairs = [
            (Level.BLUE, self.blue),
            (Level.YELLOW, self.yellow),
            (Level.ORANGE, self.orange),
            (Level.RED, self.red),
        ]
        return [(level, value) for level, value in pairs if value is not None]


class Indicator(Contract):
    """One vital sign: what it measures, where, and when it is abnormal."""

    code: Code
    name_zh: Annotated[str, Field(min_length=1)]
    name_en: Annotated[str, Field(min_length=1)]
    domain: Domain
    unit: Annotated[str, Field(min_length=1, max_length=16)]
    metric: Code = Field(description="Sensor metric the indicator reads.")
    scope_level: ScopeLevel = ScopeLevel.DEVICE
    direction: Direction = Direction.ABOVE
    thresholds: Thresholds
    hysteresis: float = Field(
        default=0.0,
        ge=0,
        description="Margin past the lowest threshold the value must reach before the alert "
        "clears (fires at 30 cm, clears below 25 cm: hysteresis 5).",
    )
    owner_department: str | None = None

    @model_validator(mode="after")
    def _levels_in_order(self) -> Indicator:
        pairs = self.thresholds.defined()
        if not pairs:
            raise ValueError("thresholds: at least one level must be set")
        values = [value for _, value in pairs]
        ordered = (
            sorted(values) if self.direction is Direction.ABOVE else sorted(values, reverse=True)
        )
        if values != ordered or len(set(values)) != len(values):
            way = "rise" if self.direction is Direction.ABOVE else "fall"
            raise ValueError(
                f"thresholds: levels must strictly {way} from blue to red for direction "
                f"{self.direction.value!r}, got {dict((lv.value, v) for lv, v in pairs)}"
            )
        return self

    def level_for(self, value: float) -> tuple[Level | None, float | None]:
        """Highest level whose threshold the value reaches, with that threshold."""
        hit: tuple[Level | None, float | None] = (None, None)
        for level, threshold in self.thresholds.defined():
            reached = (
                value >= threshold if self.direction is Direction.ABOVE else value <= threshold
            )
            if not reached:
                break
            hit = (level, threshold)
        return hit

    @property
    def clear_threshold(self) -> float:
        """The value past which an open alert resolves."""
        lowest = self.thresholds.defined()[0][1]
        return (
            lowest - self.hysteresis
            if self.direction is Direction.ABOVE
            else lowest + self.hysteresis
        )

    def clears(self, value: float) -> bool:
        """Whether the value is far enough back to resolve an open alert."""
        if self.direction is Direction.ABOVE:
            return value < self.clear_threshold
        return value > self.clear_threshold


class Catalogue:
    """Indicators by code, and by the metric they read (what the engine looks up per reading)."""

    def __init__(self, indicators: Iterable[Indicator]) -> None:
        self.by_code: dict[str, Indicator] = {}
        self.by_metric: dict[str, list[Indicator]] = {}
        for indicator in indicators:
            if indicator.code in self.by_code:
                raise ValueError(f"indicator {indicator.code!r} is defined twice")
            self.by_code[indicator.code] = indicator
            self.by_metric.setdefault(indicator.metric, []).append(indicator)

    def __len__(self) -> int:
        return len(self.by_code)

    @classmethod
    def from_mapping(cls, document: Mapping[str, object]) -> Catalogue:
        raw = document.get("indicators")
        if not isinstance(raw, list):
            raise ValueError("catalogue: top-level key 'indicators' must be a list")
        return cls(Indicator.model_validate(item) for item in raw)

    @classmethod
    def from_yaml(cls, path: Path | None = None) -> Catalogue:
        """Load a catalogue file; the bundled default catalogue when no path is given."""
        if path is None:
            text = resources.files("rules").joinpath("catalogue/indicators.yaml").read_text("utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text)
        if not isinstance(document, dict):
            raise ValueError("catalogue: expected a mapping at the top level")
        return cls.from_mapping(document)
