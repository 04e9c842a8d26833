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


def test_default_catalogue_covers_every_domain_with_at_least_40_indicators() -> None:
    from rules.indicators import Aggregation, Domain, Source

    catalogue = Catalogue.from_yaml()
    assert len(catalogue) >= 40
    found = list(catalogue.by_code.values())
    assert {i.domain for i in found} == set(Domain)
    assert {i.aggregation for i in found} == set(Aggregation)
    assert any(i.source is Source.TICKETS for i in found)
    assert any(i.direction is Direction.OUTSIDE for i in found)
    assert catalogue.by_ticket_category["drainage.waterlogging"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": None}, "metric"),
        ({"source": "tickets"}, "ticket_categories"),
        (
            {"source": "tickets", "metric": None, "ticket_categories": ["noise"]},
            "aggregation",
        ),
        ({"direction": "outside"}, "band"),
        ({"band": {"low": 1, "high": 2}}, "band"),
        (
            {"direction": "outside", "band": {"low": 3, "high": 2}},
            "band",
        ),
        ({"window_seconds": 0}, "window_seconds"),
        ({"for_seconds": -1}, "for_seconds"),
        ({"aggregation": "median"}, "aggregation"),
        ({"emergency": {"thresholds": {"blue": 9, "yellow": 3}}}, "emergency.thresholds"),
    ],
)
def test_invalid_definitions_name_the_field_at_fault(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        indicator(**change)
    text = str(caught.value)
    assert field in text


def test_outside_band_levels_are_distances_from_the_band() -> None:
    band = indicator(
        direction="outside",
        band={"low": 209, "high": 231},
        thresholds={"blue": 11, "yellow": 22, "orange": 33, "red": 44},
        hysteresis=2,
    )
    assert band.level_for(220) == (None, None)
    assert band.level_for(242) == (Level.BLUE, 11)
    assert band.level_for(187) == (Level.YELLOW, 22)
    assert band.level_for(150) == (Level.RED, 44)
    assert not band.clears(240.5)  # distance 9.5 is not under 11 - 2
    assert band.clears(239.9)


def test_emergency_profile_overrides_only_what_it_names() -> None:
    from rules.indicators import Profile

    normal = indicator(emergency={"thresholds": {"blue": 5, "red": 40}, "for_seconds": 30})
    urgent = normal.with_profile(Profile.EMERGENCY)
    assert urgent.level_for(6) == (Level.BLUE, 5)
    assert normal.level_for(6) == (None, None)
    assert urgent.for_seconds == 30
    assert urgent.hysteresis == normal.hysteresis
    assert normal.with_profile(Profile.NORMAL) is normal


def test_ticket_indicators_count_services_of_the_12345_taxonomy() -> None:
    from ingest.taxonomy import taxonomy

    services = {s.code for c in taxonomy().categories for s in c.services}
    catalogue = Catalogue.from_yaml()
    counted = {
        code
        for indicator in catalogue.by_code.values()
        if indicator.ticket_categories
        for code in indicator.ticket_categories
    }
    assert counted
    assert counted <= services, counted - services
