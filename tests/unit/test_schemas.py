"""Contracts: validation at the boundary and the committed JSON Schema files."""

from __future__ import annotations

import math
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import registry
from schemas.alerts import AlertTransition, Level
from schemas.base import describe_errors
from schemas.deadletter import MAX_PAYLOAD_CHARS, DeadLetter
from schemas.readings import SensorReading
from schemas.tickets import HotlineTicket
from schemas.topics import Topics

GOOD = {
    "device_id": "gz-wl-001",
    "metric": "waterlogging_depth",
    "value": 12.5,
    "unit": "cm",
    "ts": "2026-07-01T08:00:00+08:00",
}


def test_committed_json_schemas_match_the_models() -> None:
    assert registry.drifted() == [], "run 'city-vitals schemas' and commit the result"


def test_drift_is_detected() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry.write(Path(tmp))
        assert registry.drifted(Path(tmp)) == []
        path = Path(tmp) / "reading.v1.schema.json"
        path.write_text(path.read_text().replace('"device_id"', '"device"'))
        assert registry.drifted(Path(tmp)) == ["reading.v1.schema.json"]


def test_reading_times_are_normalised_to_utc() -> None:
    reading = SensorReading.model_validate(GOOD)
    assert reading.ts == datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert reading.ts.utcoffset() == timedelta(0)


def test_reading_id_is_derived_deterministically_when_absent() -> None:
    a = SensorReading.model_validate(GOOD)
    b = SensorReading.model_validate({**GOOD, "ts": "2026-07-01T00:00:00Z"})  # same instant
    c = SensorReading.model_validate({**GOOD, "value": 99})
    assert a.reading_id is not None
    assert a.reading_id == b.reading_id == c.reading_id  # identity is device, metric, time
    other = SensorReading.model_validate({**GOOD, "metric": "rainfall_1h"})
    assert other.reading_id != a.reading_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ts": "2026-07-01T08:00:00"}, "ts"),  # no zone
        ({"ts": 1782000000}, "ts"),  # epoch of unknown unit
        ({"value": math.nan}, "value"),
        ({"value": "deep"}, "value"),
        ({"value": "12.5"}, "value"),
        ({"value": True}, "value"),
        ({"device_id": "has space"}, "device_id"),
        ({"unit": ""}, "unit"),
        ({"unit": "c\x00m"}, "unit"),  # PostgreSQL cannot store NUL
        ({"unit": "c\nm"}, "unit"),
        ({"colour": "blue"}, "colour"),  # unknown field
        ({"location": {"lon": 200}}, "location.lon"),
    ],
)
def test_invalid_readings_are_refused_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        SensorReading.model_validate({**GOOD, **change})
    assert describe_errors(info.value).startswith(f"{field}:")


def test_missing_fields_are_named() -> None:
    with pytest.raises(ValidationError) as info:
        SensorReading.model_validate({"device_id": "x"})
    reason = describe_errors(info.value)
    for name in ("metric", "value", "unit", "ts"):
        assert f"{name}: Field required" in reason


def test_readings_are_keyed_by_device() -> None:
    assert SensorReading.model_validate(GOOD).key == b"gz-wl-001"


def test_dead_letter_payload_is_bounded() -> None:
    text, cut = DeadLetter.bounded_payload(b"x" * (MAX_PAYLOAD_CHARS + 10))
    assert cut
    assert len(text) == MAX_PAYLOAD_CHARS
    text, cut = DeadLetter.bounded_payload("短".encode())
    assert (text, cut) == ("短", False)
    text, _ = DeadLetter.bounded_payload(b"\xff\xfe")
    assert "\ufffd" in text


def test_topic_names_are_versioned_and_namespaced() -> None:
    topics = Topics(prefix="gz")
    assert topics.all() == (
        "gz.readings.v2",
        "gz.tickets.v1",
        "gz.alerts.v1",
        "gz.indicator-values.v1",
        "gz.deadletter.v1",
        "gz.rollup.v1",
    )


def test_levels_rank_blue_to_red() -> None:
    assert [lv.rank for lv in (Level.BLUE, Level.YELLOW, Level.ORANGE, Level.RED)] == [1, 2, 3, 4]


@pytest.mark.parametrize("field", ["value", "threshold"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_alert_transitions_refuse_numbers_json_cannot_store(field: str, number: str) -> None:
    """pydantic's JSON parser reads NaN and Infinity; an alert's numbers must be finite."""
    good = {
        "transition_id": "00000000-0000-4000-8000-000000000001",
        "alert_id": "00000000-0000-4000-8000-000000000002",
        "seq": 1,
        "kind": "firing",
        "indicator": "waterlogging_depth",
        "scope_level": "device",
        "scope_id": "gz-wl-001",
        "level": "red",
        "previous_level": None,
        "value": 31.5,
        "threshold": 30.0,
        "occurrences": 1,
        "opened_at": "2026-07-01T00:00:00Z",
        "observed_at": "2026-07-01T00:00:00Z",
    }
    assert AlertTransition.model_validate_json(orjson.dumps(good)).value == 31.5
    bad = orjson.dumps(good).replace(
        f'"{field}":{good[field]}'.encode(), f'"{field}":{number}'.encode()
    )
    with pytest.raises(ValidationError) as caught:
        AlertTransition.model_validate_json(bad)
    assert describe_errors(caught.value).startswith(f"{field}: Input should be a finite number")


def test_other_zones_are_accepted() -> None:
    ts = datetime(2026, 7, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    reading = SensorReading(device_id="a", metric="m", value=1, unit="u", ts=ts)
    assert reading.ts.tzinfo is UTC


def test_ticket_text_keeps_line_breaks_but_refuses_control_characters() -> None:
    base = {
        "ticket_id": "6f1d4c1e-2b8a-4b57-9a57-6e0d0c8f3a11",
        "category": "drainage",
        "reported_at": "2026-07-01T08:00:00+08:00",
    }
    ticket = HotlineTicket.model_validate({**base, "description": "路口积水\n约30厘米"})
    assert ticket.description == "路口积水\n约30厘米"
    with pytest.raises(ValidationError, match="description"):
        HotlineTicket.model_validate({**base, "description": "积水\x00"})


_GOOD = {
    "device_id": "wl-1",
    "metric": "waterlogging_depth",
    "value": 12.5,
    "unit": "cm",
    "ts": "2026-07-01T08:00:00+08:00",
}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"reading_id": "6f1d4c1e-2b8a-4b57-9a57-6e0d0c8f3a11"},
        {"reading_id": None},
        {"value": 3},
        {"location": {"district": "yuexiu", "grid": "g-1", "lon": 113.2, "lat": 23.1}},
        {"location": {}},
        {"unit": "  cm  "},
        {"ts": "2026-07-01T00:00:00Z"},
        # refused by both
        {"ts": "2026-07-01T00:00:00"},
        {"ts": 1782000000},
        {"value": "12"},
        {"value": True},
        {"device_id": "has space"},
        {"device_id": ""},
        {"metric": "x" * 65},
        {"unit": "a\\u0000b"},
        {"unit": "x" * 17},
        {"extra": 1},
        {"location": {"district": "yuexiu", "floor": 3}},
        {"location": {"lon": 181.0}},
        {"reading_id": "not-a-uuid"},
    ],
)
def test_the_fast_reading_record_agrees_with_the_contract(changes: dict[str, object]) -> None:
    """READING_RECORD (the writer's fast path) accepts exactly what SensorReading accepts and
    yields the same values, including the derived reading id."""
    from schemas.readings import READING_RECORD, derive_reading_id

    raw = orjson.dumps({**_GOOD, **changes})
    try:
        model = SensorReading.model_validate_json(raw)
    except ValidationError:
        model = None
    try:
        record = READING_RECORD.validate_json(raw)
    except ValidationError:
        record = None
    assert (model is None) == (record is None), (model, record)
    if model is None or record is None:
        return
    given = record.get("reading_id")
    ts = record["ts"].astimezone(UTC)
    derived = derive_reading_id(record["device_id"], record["metric"], ts.isoformat())
    assert (given or derived) == model.reading_id
    assert record["ts"] == model.ts
    assert (record["device_id"], record["metric"], record["value"], record["unit"]) == (
        model.device_id,
        model.metric,
        model.value,
        model.unit,
    )
    location = record.get("location") or {}
    assert {k: v for k, v in location.items() if v is not None} == model.location.model_dump(
        exclude_none=True
    )


def test_the_fast_reading_id_is_uuid5() -> None:
    import uuid

    from schemas.readings import _READING_NS, derive_reading_id

    for name in (("d", "aqi", "2026-07-01T00:00:00+00:00"), ("设备-1", "x", "t")):
        assert derive_reading_id(*name) == uuid.uuid5(_READING_NS, "|".join(name))


@given(
    st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    )
)
def test_the_hot_path_reading_id_equals_the_defined_one(ts: datetime) -> None:
    """reading_id_bytes writes the instant from its microseconds as isoformat writes it, or
    ids the writer derives would differ from SensorReading's."""
    from schemas.readings import derive_reading_id, micros, reading_id_bytes

    derived = reading_id_bytes("d-1", "aqi", micros(ts))
    assert derived == derive_reading_id("d-1", "aqi", ts.isoformat()).bytes


_FRAME = {
    "device_id": ["wl-1", "wl-2"],
    "metric": ["waterlogging_depth", "waterlogging_depth"],
    "unit": ["cm", "cm"],
    "ts": [1_782_000_000_000_000, 1_782_000_000_500_000],
    "value": [12.5, 3],
    "place": [0, None],
    "places": {"district": ["yuexiu"], "grid": ["g-1"]},
}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"reading_id": ["6f1d4c1e-2b8a-4b57-9a57-6e0d0c8f3a11", None]}, None),
        ({"place": [None, None], "places": {}}, None),
        ({"places": {"district": ["yuexiu"], "grid": [None]}}, None),
        ({"ts": [-1_000_000, 0]}, None),  # before 1970 is a time too
        ({"value": [12.5]}, "value: 1 items for 2 readings"),
        ({"reading_id": [None]}, "reading_id: 1 items for 2 readings"),
        ({"place": [0, 1]}, "place: 1 is past the 1 places"),
        ({"ts": ["2026-07-01T00:00:00Z", 0]}, "ts.0: Input should be a valid integer"),
        ({"ts": [True, 0]}, "ts.0: Input should be a valid integer"),
        ({"value": [1e309, 1]}, "value.0"),
        ({"device_id": ["has space", "x"]}, "device_id.0: String should match pattern"),
        ({"device_id": [], "metric": [], "unit": [], "ts": [], "value": [], "place": []},
         "device_id: List should have at least 1 item"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
        ({"places": {"floor": [3]}}, "places.floor: Extra inputs are not permitted"),
        ({"places": {"district": ["a", "b"], "grid": ["g"]}}, "places: columns of 1 and 2"),
        ({"places": {"lon": [181.0]}}, "places.lon.0: Input should be less than or equal"),
    ],
)  # fmt: skip
def test_a_frame_is_checked_column_by_column_and_as_a_whole(
    changes: dict[str, object], reason: str | None
) -> None:
    from schemas.readings import FrameError, read_frame

    raw = orjson.dumps({**_FRAME, **changes})
    if reason is None:
        assert len(read_frame(raw)["ts"]) == 2
        return
    with pytest.raises((ValidationError, FrameError)) as caught:
        read_frame(raw)
    exc = caught.value
    said = describe_errors(exc) if isinstance(exc, ValidationError) else str(exc)
    assert said.startswith(reason), said
