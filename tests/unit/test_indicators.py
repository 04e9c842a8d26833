"""Indicator definitions: levels, direction, hysteresis and refusal of bad definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rules.indicators import Catalogue, Direction, Indicator
from schemas.alerts import Level

BASE = {
    "code": "water.depth",
    "name_zh": "积水深度",
    "name_en": "Depth",
    "domain": "water",
    "unit": "cm",
    "metric": "waterlogging_depth",
    "thresholds": {"blue": 10, "yellow": 20, "orange": 30, "red": 50},
    "hysteresis": 5,
}


def indicator(**change: object) -> Indicator:
    return Indicator.model_validate({**BASE, **change})


@pytest.mark.parametrize(
    ("value", "level", "threshold"),
    [
        (9.99, None, None),
        (10, Level.BLUE, 10),
        (29.9, Level.YELLOW, 20),
        (30, Level.ORANGE, 30),
        (500, Level.RED, 50),
    ],
)
def test_level_for_a_rising_indicator(
    value: float, level: Level | None, threshold: float | None
) -> None:
    assert indicator().level_for(value) == (level, threshold)


def test_level_for_a_falling_indicator() -> None:
    speed = indicator(
        direction="below", thresholds={"blue": 30, "yellow": 20, "red": 5}, hysteresis=3
    )
    assert speed.level_for(31) == (None, None)
    assert speed.level_for(25) == (Level.BLUE, 30)
    assert speed.level_for(6) == (Level.YELLOW, 20)
    assert speed.level_for(5) == (Level.RED, 5)
    assert speed.clear_threshold == 33
    assert not speed.clears(32)
    assert speed.clears(33.5)


def test_hysteresis_sets_the_clear_threshold() -> None:
    depth = indicator()
    assert depth.clear_threshold == 5
    assert not depth.clears(5)
    assert depth.clears(4.9)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"thresholds": {"blue": 30, "yellow": 20}}, "strictly rise"),
        ({"direction": "below"}, "strictly fall"),
        ({"thresholds": {"blue": 10, "red": 10}}, "strictly rise"),
        ({"thresholds": {}}, "at least one level"),
        ({"hysteresis": -1}, "hysteresis"),
        ({"domain": "weather"}, "domain"),
        ({"scope_level": "planet"}, "scope_level"),
    ],
)
def test_invalid_definitions_are_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        indicator(**change)
    assert words in str(info.value)


def test_the_bundled_catalogue_loads() -> None:
    catalogue = Catalogue.from_yaml()
    assert len(catalogue) >= 5
    assert catalogue.by_code["traffic.road_speed"].direction is Direction.BELOW
    assert [i.code for i in catalogue.by_metric["waterlogging_depth"]] == [
        "water.waterlogging_depth"
    ]


def test_duplicate_codes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "indicators:\n  - {code: a, name_zh: 甲, name_en: A, domain: water, unit: cm,"
        " metric: m, thresholds: {red: 1}}\n"
        * 1
        + "  - {code: a, name_zh: 甲, name_en: A, domain: water, unit: cm,"
        " metric: m, thresholds: {red: 1}}\n"
    )
    with pytest.raises(ValueError, match="defined twice"):
        Catalogue.from_yaml(path)


def test_a_catalogue_without_indicators_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just a list\n")
    with pytest.raises(ValueError, match="mapping"):
        Catalogue.from_yaml(path)
