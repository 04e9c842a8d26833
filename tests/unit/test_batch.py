"""Ingest batch parsing and per-item validation (pure)."""

from __future__ import annotations

import pytest

from ingest.batch import MalformedBatch, parse_body, sort_items

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


def test_both_body_forms_are_read() -> None:
    assert parse_body(b'[{"a": 1}]', max_items=10) == [{"a": 1}]
    assert parse_body(b'{"readings": [{"a": 1}]}', max_items=10) == [{"a": 1}]


def test_items_are_sorted_one_by_one() -> None:
    result = sort_items([ITEM, 7, {**ITEM, "value": None}, {**ITEM, "device_id": "e"}])
    assert [r.device_id for r in result.accepted] == ["d", "e"]
    assert [(r.index, r.reason.split(":")[0]) for r in result.rejected] == [
        (1, "expected an object, got int"),
        (2, "value"),
    ]
