"""Ingest batch parsing, per-item validation and retry de-duplication (pure)."""

from __future__ import annotations

import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ingest.batch import (
    Accepted,
    Columns,
    MalformedBatch,
    RecentIds,
    Sorted,
    frames,
    latest_allowed,
    parse_body,
    parse_ndjson,
    read_records,
    sort_body,
    sort_items,
)
from ingest.city.model import City
from schemas.readings import LocationRecord, SensorReading, encode_frame, frame_readings, read_frame

ITEM = {"device_id": "d", "metric": "aqi", "value": 1, "unit": "AQI", "ts": "2026-07-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "empty body"),
        (b"{not json", "not valid JSON"),
        (b'"text"', "got str"),
        (b"[]", "no readings"),
        (b'{"readings": [], "extra": 1}', 'only a "readings" key'),
        (b'{"items": []}', 'only a "readings" key'),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, words: str) -> None:
    with pytest.raises(MalformedBatch, match=words):
        parse_body(body, max_items=10)


def test_batch_size_is_bounded() -> None:
    with pytest.raises(MalformedBatch, match="exceeds the limit of 2"):
        parse_body(b"[1, 2, 3]", max_items=2)
    with pytest.raises(MalformedBatch, match="exceeds the limit of 2"):
        parse_ndjson(b"1\n2\n3\n", max_items=2)


def test_both_body_forms_are_read() -> None:
    assert parse_body(b'[{"a": 1}]', max_items=10) == [{"a": 1}]
    assert parse_body(b'{"readings": [{"a": 1}]}', max_items=10) == [{"a": 1}]


def test_ndjson_lines_are_items_and_a_bad_line_is_refused_alone() -> None:
    body = orjson.dumps(ITEM) + b"\n\n{oops\n" + orjson.dumps({**ITEM, "device_id": "e"}) + b"\n"
    result = sort_items(parse_ndjson(body, max_items=10))
    assert [r.device_id for r in result.accepted] == ["d", "e"]
    assert [(r.index, r.reason.split(":")[0]) for r in result.rejected] == [
        (1, "line is not valid JSON")
    ]
    with pytest.raises(MalformedBatch, match="empty body"):
        parse_ndjson(b"\n \n", max_items=10)


def test_items_are_sorted_one_by_one() -> None:
    result = sort_items([ITEM, 7, {**ITEM, "value": None}, {**ITEM, "device_id": "e"}])
    assert [r.device_id for r in result.accepted] == ["d", "e"]
    assert [(r.index, r.reason.split(":")[0]) for r in result.rejected] == [
        (1, "expected an object, got int"),
        (2, "value"),
    ]


def test_accepted_readings_are_normalised_like_the_contract() -> None:
    item = {**ITEM, "ts": "2026-07-01T08:00:00+08:00", "location": {"district": "yuexiu"}}
    [accepted] = sort_items([item]).accepted
    model = SensorReading.model_validate(item)
    assert accepted.record["ts"] == "2026-07-01T00:00:00Z"
    assert SensorReading.model_validate(accepted.record) == model
    # On the topic, in a frame: the same reading, its id derived as the contract derives it.
    [frame] = frames([accepted])
    assert [SensorReading.model_validate(r) for r in frame_readings(read_frame(frame))] == [model]


def test_frames_carry_client_ids_and_places_once_and_split_at_their_size() -> None:
    chosen = str(uuid.uuid4())
    place = {"district": "yuexiu", "grid": "g1"}
    items = [{**ITEM, "ts": f"2026-07-01T00:00:0{i}Z", "location": place} for i in range(5)]
    items[3] = {**ITEM, "ts": "2026-07-01T00:00:03Z", "reading_id": chosen}  # nowhere
    accepted = sort_items(items).accepted
    assert accepted[3].ident == accepted[3].reading_id == chosen
    assert accepted[0].ident == ("d", "aqi", accepted[0].ts)  # a retry repeats the reading
    first, second = frames(accepted, size=3)
    assert orjson.loads(first)["places"] == {"grid": ["g1"], "district": ["yuexiu"]}
    assert orjson.loads(first)["place"] == [0, 0, 0]
    assert "reading_id" not in orjson.loads(first)
    again = frame_readings(read_frame(first)) + frame_readings(read_frame(second))
    assert [SensorReading.model_validate(r) for r in again] == [
        SensorReading.model_validate(i) for i in items
    ]


def test_a_device_key_sends_only_its_own_readings() -> None:
    result = sort_items([ITEM, {**ITEM, "device_id": "other"}], only_device="d")
    assert [r.device_id for r in result.accepted] == ["d"]
    assert result.rejected[0].index == 1
    assert "may only send readings of device 'd'" in result.rejected[0].reason


def test_readings_from_a_clock_running_ahead_are_refused() -> None:
    now = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    limit = latest_allowed(300, now)
    ahead = {**ITEM, "ts": "2026-07-01T08:04:59Z"}
    too_far = {**ITEM, "ts": "2026-07-01T08:05:01Z", "device_id": "e"}
    result = sort_items([ahead, too_far], not_after=limit)
    assert [r.device_id for r in result.accepted] == ["d"]
    assert result.rejected[0].index == 1
    assert result.rejected[0].reason.startswith("ts: 2026-07-01T08:05:01+00:00 is ahead")
    assert latest_allowed(None, now) is None  # no limit set


def test_recent_ids_drop_repeats_and_release_failed_hand_offs() -> None:
    recent = RecentIds(capacity=4)  # two generations of two
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    assert recent.claim([a, b]) == [True, True]
    assert recent.claim([a]) == [False]  # in flight: a concurrent retry does not resend it
    recent.settle([a, b], delivered=False)  # the broker failed: the client's retry must pass
    assert recent.claim([a, b]) == [True, True]
    recent.settle([a, b], delivered=True)
    assert recent.claim([a, b, c]) == [False, False, True]
    recent.settle([c], delivered=True)
    assert recent.claim([d]) == [True]
    recent.settle([d], delivered=True)
    assert len(recent) == 2  # bounded: the older generation (a, b) is forgotten
    assert recent.claim([a, d]) == [True, False]
    recent.settle([a], delivered=True)


def test_recent_ids_keep_a_claim_in_flight_however_many_pass_meanwhile() -> None:
    recent = RecentIds(capacity=4)
    slow = uuid.uuid4()
    assert recent.claim([slow]) == [True]  # its hand-off takes a while
    for _ in range(5):
        others = [uuid.uuid4(), uuid.uuid4()]
        assert recent.claim(others) == [True, True]
        recent.settle(others, delivered=True)
    assert recent.claim([slow]) == [False]  # still taken: a retry now is not sent twice
    recent.settle([slow], delivered=True)
    assert recent.claim([slow]) == [False]  # delivered and remembered
    fresh = [uuid.uuid4(), uuid.uuid4()]
    recent.claim(fresh)
    recent.settle(fresh, delivered=True)
    assert len(recent) == 2  # what piled up behind the claim is forgotten once it settled


def test_sorting_is_deterministic_in_ids() -> None:
    ts = datetime(2026, 7, 1, tzinfo=UTC).isoformat()
    first = sort_items([{**ITEM, "ts": ts}]).accepted[0].ident
    assert sort_items([{**ITEM, "ts": ts}]).accepted[0].ident == first


def test_units_are_normalised_to_the_metric_s_canonical_one() -> None:
    depth = {**ITEM, "metric": "waterlogging_depth", "unit": "mm", "value": 315}
    speed = {**ITEM, "metric": "road_speed", "unit": "m/s", "value": 10}
    odd = {**ITEM, "metric": "waterlogging_depth", "unit": "furlong", "value": 1}
    result = sort_items([depth, speed, odd, ITEM])
    got = [(a.record["unit"], a.record["value"]) for a in result.accepted]
    assert got == [("cm", 31.5), ("km/h", 36.0), ("AQI", 1)]
    assert "'furlong' cannot be converted to 'cm'" in result.rejected[0].reason


def _verdicts(result: Sorted) -> tuple[list[Accepted], list[tuple[int, str]]]:
    return (
        list(result.accepted),
        [(r.index, r.reason) for r in result.rejected],
    )


@pytest.mark.parametrize("form", ["array", "envelope", "ndjson"])
def test_a_valid_body_is_validated_at_once_with_the_same_outcome(form: str) -> None:
    """The fast path (every item validated straight from the body's bytes) accepts what the
    item-by-item path accepts, normalised the same way."""
    items = orjson.loads(City(seed=3).body(1_782_000_000.0, 200))
    items[5] = {**items[5], "unit": "mm", "value": 315}  # converted on both paths
    items[6] = {**items[6], "ts": "2026-07-01T08:00:00+08:00", "reading_id": str(uuid.uuid4())}
    if form == "ndjson":
        body = b"\n".join(orjson.dumps(i) for i in items)
        slow = sort_items(parse_ndjson(body, max_items=500))
    else:
        body = orjson.dumps(items if form == "array" else {"readings": items})
        slow = sort_items(parse_body(body, max_items=500))
    ndjson = form == "ndjson"
    assert read_records(body, ndjson=ndjson, max_items=500) is not None
    fast = sort_body(body, ndjson=ndjson, max_items=500)
    assert _verdicts(fast) == _verdicts(slow)
    assert len(fast.accepted) == 200
    assert fast.accepted[5].record["value"] == 31.5


def test_one_bad_item_sends_the_body_down_the_item_by_item_path() -> None:
    good = {**ITEM, "device_id": "e"}
    body = orjson.dumps([ITEM, {**ITEM, "ts": 1_782_000_000}, good])
    assert read_records(body, ndjson=False, max_items=10) is None
    result = sort_body(body, ndjson=False, max_items=10)
    assert [a.device_id for a in result.accepted] == ["d", "e"]
    assert [(r.index, r.reason.split(":")[0]) for r in result.rejected] == [(1, "ts")]
    with pytest.raises(MalformedBatch, match="exceeds the limit of 2"):
        sort_body(body, ndjson=False, max_items=2)
    with pytest.raises(MalformedBatch, match="not valid JSON"):
        sort_body(b"[{", ndjson=False, max_items=2)


def test_an_id_twice_in_one_batch_is_new_once() -> None:
    recent = RecentIds(capacity=10)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert recent.claim([a, b, a]) == [True, True, False]
    recent.settle([a, b], delivered=True)
    assert recent.claim([b, a]) == [False, False]


def test_a_sorted_batch_crosses_a_pipe_by_columns_and_comes_back_the_same() -> None:
    import pickle

    items = [*orjson.loads(City(seed=4).body(1_782_000_000.0, 50)), 7]
    result = sort_items(items)
    back = pickle.loads(pickle.dumps(result))
    assert back == result
    assert all(type(a) is Accepted for a in back.accepted)
    assert pickle.loads(pickle.dumps(Sorted())) == Sorted()


def test_a_refused_item_keeps_what_the_client_sent_even_from_a_valid_body() -> None:
    late = {**ITEM, "device_id": "e", "ts": "2026-07-01T16:10:00+08:00", "value": 3}
    body = orjson.dumps([ITEM, late])
    now = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    result = sort_body(body, ndjson=False, max_items=10, not_after=latest_allowed(300, now))
    assert [a.device_id for a in result.accepted] == ["d"]
    [refused] = result.rejected
    assert (refused.index, refused.item) == (1, late)  # not the normalised record


def test_the_registry_refuses_by_the_item_s_place_in_the_batch_and_fills_in_places() -> None:
    from ingest.registry import DeviceEntry, check_devices

    items = [7, {**ITEM, "device_id": "ghost"}, {**ITEM, "location": {"grid": "g1"}}]
    devices = {"d": DeviceEntry(active=True, place={"district": "yuexiu", "grid": "g0"})}
    result = check_devices(sort_items(items), devices)
    assert sorted((r.index, r.reason.split(" ")[0]) for r in result.rejected) == [
        (0, "expected"),
        (1, "device_id:"),
    ]
    [kept] = result.accepted
    assert kept.position == 2
    assert kept.record["location"] == {"grid": "g1", "district": "yuexiu"}


def test_a_location_that_states_nothing_is_no_place_in_a_frame() -> None:
    nowhere = {"lon": None, "lat": None, "grid": None, "street": None, "district": None}
    accepted = sort_items([{**ITEM, "location": nowhere}, {**ITEM, "device_id": "e"}]).accepted
    [frame] = frames(accepted)
    assert orjson.loads(frame)["place"] == [None, None]
    assert [r.get("location") for r in frame_readings(read_frame(frame))] == [None, None]


def test_a_frame_writes_each_place_once_shared_or_equal() -> None:
    here: LocationRecord = {"district": "yuexiu", "grid": "g1"}
    nowhere: LocationRecord = {"district": None}
    there: LocationRecord = {"district": "tianhe"}
    frame = orjson.loads(
        encode_frame(
            ["a", "b", "c", "d", "e"], ["aqi"] * 5, ["AQI"] * 5, [1, 2, 3, 4, 5], [1.0] * 5,
            [here, LocationRecord(**here), here, nowhere, there],
        )
    )  # fmt: skip
    assert frame["place"] == [0, 0, 0, None, 1]
    assert frame["places"] == {"grid": ["g1", None], "district": ["yuexiu", "tianhe"]}


def test_a_frame_body_is_sorted_as_the_same_readings_in_a_json_body() -> None:
    """A gateway's frame (the readings topic's own form) and the JSON array of the same
    readings give the same accepted readings."""
    frame, body = City(seed=3).frame(1_782_000_000.5, 300), City(seed=3).body(1_782_000_000.5, 300)
    from_frame = sort_body(frame, ndjson=False, frame=True, max_items=500)
    from_body = sort_body(body, ndjson=False, max_items=500)
    assert not from_frame.rejected
    assert [a.record for a in from_frame.accepted] == [a.record for a in from_body.accepted]
    assert [a.ident for a in from_frame.accepted] == [a.ident for a in from_body.accepted]


def _frame(**changes: object) -> bytes:
    frame: dict[str, object] = {
        "device_id": ["d", "e", "f"],
        "metric": ["waterlogging_depth"] * 3,
        "unit": ["cm", "mm", "cm"],
        "ts": [1_782_000_000_000_000, 1_782_000_001_000_000, 1_782_000_002_000_000],
        "value": [1.0, 315, 2.5],
        "place": [0, None, 0],
        "places": {"district": ["yuexiu"]},
    }
    return orjson.dumps({**frame, **changes})


def test_a_frame_s_readings_are_normalised_and_refused_by_their_position() -> None:
    result = sort_body(_frame(), ndjson=False, frame=True, max_items=10)
    assert [(a.device_id, a.unit, a.value) for a in result.accepted] == [
        ("d", "cm", 1.0), ("e", "cm", 31.5), ("f", "cm", 2.5),
    ]  # fmt: skip
    assert result.accepted[0].location == {"district": "yuexiu"}
    assert result.accepted[1].location is None

    bad = _frame(device_id=["d", "has space", "f"], ts=[1_782_000_000_000_000, 0, "now"])
    result = sort_body(bad, ndjson=False, frame=True, max_items=10)
    assert [a.device_id for a in result.accepted] == ["d"]
    assert [(r.index, r.reason.split(":")[0]) for r in result.rejected] == [
        (1, "device_id"),
        (2, "ts"),
    ]
    result = sort_body(_frame(place=[0, 7, 0]), ndjson=False, frame=True, max_items=10)
    assert [(r.index, r.reason.split(":")[0]) for r in result.rejected] == [(1, "location.place")]

    mine = sort_body(_frame(), ndjson=False, frame=True, max_items=10, only_device="e")
    assert [a.device_id for a in mine.accepted] == ["e"]
    assert [r.index for r in mine.rejected] == [0, 2]
    ahead = sort_body(
        _frame(), ndjson=False, frame=True, max_items=10,
        not_after=datetime.fromtimestamp(1_782_000_001, UTC),
    )  # fmt: skip
    assert [r.index for r in ahead.rejected] == [2]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "expected a frame"),
        (b'{"device_id": ["d"]}', "expected a frame"),
        (_frame(value=[1.0]), "do not all hold 3 readings"),
        (_frame(extra=1), "unknown frame fields: extra"),
        (b"{", "not valid JSON"),
    ],
)
def test_a_body_that_is_no_frame_is_refused_whole(body: bytes, words: str) -> None:
    with pytest.raises(MalformedBatch, match=words):
        sort_body(body, ndjson=False, frame=True, max_items=10)
    with pytest.raises(MalformedBatch, match="exceeds the limit"):
        sort_body(_frame(), ndjson=False, frame=True, max_items=2)


def _readings(frame: bytes) -> list[dict[str, Any]]:
    return frame_readings(read_frame(frame))


@pytest.mark.parametrize("size", [2, 3, 2_000])
def test_a_frame_that_passes_whole_is_re_framed_from_its_columns_as_reading_by_reading(
    size: int,
) -> None:
    """The columnar path (``Columns``) writes the same readings as ``frames`` does from the
    readings one by one: places renumbered per frame, a place stating nothing as none, ids."""
    body = _frame(
        device_id=["d", "e", "f", "g", "h"],
        metric=["aqi"] * 5,
        unit=["AQI"] * 5,
        ts=[1_782_000_000_000_000 + i for i in range(5)],
        value=[1.0, 2.0, 3.0, 4.0, 5.0],
        place=[2, None, 0, 1, 2],
        places={"district": ["yuexiu", None, "tianhe"], "grid": [None, None, "g7"]},
        reading_id=[None, str(uuid.UUID(int=7)), None, None, None],
    )
    result = sort_body(body, ndjson=False, frame=True, max_items=10)
    columns = result.accepted
    assert isinstance(columns, Columns)
    assert not result.rejected
    assert columns[3].location is None  # place 1 states nothing
    assert columns[1].ident == str(uuid.UUID(int=7))
    assert columns[0].ident == ("d", "aqi", columns[0].ts)
    assert columns.idents() == [a.ident for a in columns]
    mine = [r for frame in columns.frames(size) for r in _readings(frame)]
    theirs = [r for frame in frames(list(columns), size) for r in _readings(frame)]
    assert mine == theirs
    districts = [(r.get("location") or {}).get("district") for r in mine]
    assert districts == ["tianhe", None, "yuexiu", None, "tianhe"]
    part = columns.take([4, 0])
    assert [r for f in part.frames(size) for r in _readings(f)] == [theirs[4], theirs[0]]


def test_a_frame_s_columns_pickle_and_compare_as_its_readings() -> None:
    result = sort_body(City(seed=5).frame(1_782_000_000.5, 50), ndjson=False, frame=True,
                       max_items=100)  # fmt: skip
    assert isinstance(result.accepted, Columns)
    back = pickle.loads(pickle.dumps(result))
    assert back.accepted == result.accepted == list(result.accepted)
    assert len(back.accepted) == 50
    assert back.accepted.placed()


def test_the_registry_checks_a_frame_s_devices_in_its_columns() -> None:
    from ingest.registry import DeviceEntry, check_devices

    placed = {"district": "yuexiu"}
    body = _frame(unit=["cm"] * 3, place=[0, None, 0])
    everyone = {d: DeviceEntry(active=True) for d in "def"}
    result = sort_body(body, ndjson=False, frame=True, max_items=10)
    assert check_devices(result, everyone) is result  # nothing to refuse or fill: untouched
    filled = check_devices(result, {**everyone, "e": DeviceEntry(active=True, place=placed)})
    assert [a.location for a in filled.accepted] == [placed, placed, placed]
    refused = check_devices(result, {**everyone, "f": DeviceEntry(active=False)})
    assert [a.device_id for a in refused.accepted] == ["d", "e"]
    assert [(r.index, "disabled" in r.reason) for r in refused.rejected] == [(2, True)]


def test_recent_ids_take_an_id_repeated_within_a_batch_once() -> None:
    recent = RecentIds(capacity=10)
    assert recent.claim(["a", "b", "a"]) == [True, True, False]
    recent.settle(["a", "b"], delivered=True)
    assert recent.claim(["a", "c"]) == [False, True]
