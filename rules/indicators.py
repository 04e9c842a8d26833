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
from schemas.base import LINE_PATTERN, Code, Contract


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
    OUTSIDE = "outside"  # breach when the value leaves a band; thresholds are distances from it


class Source(StrEnum):
    SENSOR = "sensor"  # readings of one sensor metric
    TICKETS = "tickets"  # count of 12345 tickets in some Open311 service codes


class Aggregation(StrEnum):
    """How the readings of one event-time window become the indicator's value."""

    LAST = "last"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    SUM = "sum"
    COUNT = "count"
    RATE_OF_CHANGE = "rate_of_change"  # (last - first) per hour of event time within the window


class Profile(StrEnum):
    """平急 profiles: normal operation, or emergency mode with tighter thresholds."""

    NORMAL = "normal"
    EMERGENCY = "emergency"


class Band(Contract):
    """The normal band of an ``outside`` indicator (e.g. water pressure 0.2-0.4 MPa)."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if not self.low < self.high:
            raise ValueError(f"band: low {self.low} must be below high {self.high}")
        return self


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


class ProfileOverride(Contract):
    """What changes in emergency mode; fields left out keep their normal values."""

    thresholds: Thresholds | None = None
    for_seconds: int | None = Field(default=None, ge=0)
    hysteresis: float | None = Field(default=None, ge=0)


class Indicator(Contract):
    """One vital sign: what it measures, where, and when it is abnormal."""

    code: Code
    # One printable line each: definitions are stored as jsonb, which cannot hold NUL.
    name_zh: Annotated[str, Field(min_length=1, max_length=128, pattern=LINE_PATTERN)]
    name_en: Annotated[str, Field(min_length=1, max_length=128, pattern=LINE_PATTERN)]
    domain: Domain
    unit: Annotated[str, Field(min_length=1, max_length=16, pattern=LINE_PATTERN)]
    source: Source = Source.SENSOR
    metric: Code | None = Field(default=None, description="Sensor metric (source sensor).")
    ticket_categories: list[Code] = Field(
        default_factory=list, description="Open311 service codes counted (source tickets)."
    )
    scope_level: ScopeLevel = ScopeLevel.DEVICE
    aggregation: Aggregation = Aggregation.LAST
    window_seconds: int = Field(default=60, ge=1, le=86_400, description="Event-time window.")
    allowed_lateness_seconds: int = Field(
        default=30,
        ge=0,
        le=86_400,
        description="A window closes this long (event time) after its end; readings for it "
        "arriving later are counted as late and left out.",
    )
    expected_every_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Expected update interval; no data for 3 intervals raises a no-data alert.",
    )
    direction: Direction = Direction.ABOVE
    band: Band | None = None
    thresholds: Thresholds
    for_seconds: int = Field(
        default=0, ge=0, description="A level must hold this long before the alert fires."
    )
    clear_for_seconds: int = Field(
        default=0, ge=0, description="The value must stay past the clear threshold this long."
    )
    emergency: ProfileOverride | None = Field(
        default=None, description="Emergency-mode (急) overrides; normal (平) is the rest."
    )
    hysteresis: float = Field(
        default=0.0,
        ge=0,
        description="Margin past the lowest threshold the value must reach before the alert "
        "clears (fires at 30 cm, clears below 25 cm: hysteresis 5).",
    )
    owner_department: Annotated[str, Field(max_length=128, pattern=LINE_PATTERN)] | None = None

    @model_validator(mode="after")
    def _source_complete(self) -> Indicator:
        if self.source is Source.SENSOR:
            if self.metric is None:
                raise ValueError("metric: required when source is 'sensor'")
            if self.ticket_categories:
                raise ValueError("ticket_categories: only allowed when source is 'tickets'")
        else:
            if not self.ticket_categories:
                raise ValueError("ticket_categories: at least one code when source is 'tickets'")
            if self.metric is not None:
                raise ValueError("metric: not allowed when source is 'tickets'")
            if self.aggregation is not Aggregation.COUNT:
                raise ValueError("aggregation: must be 'count' when source is 'tickets'")
            if self.scope_level in (ScopeLevel.DEVICE,):
                raise ValueError("scope_level: tickets have no device; use grid..city")
        if (self.direction is Direction.OUTSIDE) != (self.band is not None):
            raise ValueError("band: required exactly when direction is 'outside'")
        return self

    @model_validator(mode="after")
    def _levels_in_order(self) -> Indicator:
        self._check_thresholds(self.thresholds, "thresholds")
        if self.emergency is not None and self.emergency.thresholds is not None:
            self._check_thresholds(self.emergency.thresholds, "emergency.thresholds")
        return self

    def _check_thresholds(self, thresholds: Thresholds, field: str) -> None:
        pairs = thresholds.defined()
        if not pairs:
            raise ValueError(f"{field}: at least one level must be set")
        values = [value for _, value in pairs]
        falling = self.direction is Direction.BELOW
        ordered = sorted(values, reverse=falling)
        if values != ordered or len(set(values)) != len(values):
            way = "fall" if falling else "rise"
            raise ValueError(
                f"{field}: levels must strictly {way} from blue to red for direction "
                f"{self.direction.value!r}, got {dict((lv.value, v) for lv, v in pairs)}"
            )
        if self.direction is Direction.OUTSIDE and values[0] < 0:
            raise ValueError(f"{field}: distances outside the band must be >= 0")

    def with_profile(self, profile: Profile) -> Indicator:
        """The effective definition under a profile (emergency overrides applied)."""
        if profile is Profile.NORMAL or self.emergency is None:
            return self
        change = {
            name: value
            for name, value in self.emergency.model_dump(exclude_none=True).items()
            if name in ("thresholds", "for_seconds", "hysteresis")
        }
        return Indicator.model_validate({**self.model_dump(), **change, "emergency": None})

    def severity(self, value: float) -> float:
        """The value on the axis thresholds apply to (distance out of the band for outside)."""
        if self.band is None:
            return value
        return max(self.band.low - value, value - self.band.high)

    def level_for(self, value: float) -> tuple[Level | None, float | None]:
        """Highest level whose threshold the value reaches, with that threshold."""
        hit: tuple[Level | None, float | None] = (None, None)
        value = self.severity(value)
        for level, threshold in self.thresholds.defined():
            reached = (
                value <= threshold if self.direction is Direction.BELOW else value >= threshold
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
            lowest + self.hysteresis
            if self.direction is Direction.BELOW
            else lowest - self.hysteresis
        )

    def clears(self, value: float) -> bool:
        """Whether the value is far enough back to resolve an open alert."""
        if self.direction is Direction.BELOW:
            return value > self.clear_threshold
        return self.severity(value) < self.clear_threshold


class Catalogue:
    """Indicators by code, and by the metric they read (what the engine looks up per reading)."""

    def __init__(self, indicators: Iterable[Indicator]) -> None:
        self.by_code: dict[str, Indicator] = {}
        self.by_metric: dict[str, list[Indicator]] = {}
        self.by_ticket_category: dict[str, list[Indicator]] = {}
        for indicator in indicators:
            if indicator.code in self.by_code:
                raise ValueError(f"indicator {indicator.code!r} is defined twice")
            self.by_code[indicator.code] = indicator
            if indicator.metric is not None:
                self.by_metric.setdefault(indicator.metric, []).append(indicator)
            for category in indicator.ticket_categories:
                self.by_ticket_category.setdefault(category, []).append(indicator)

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
