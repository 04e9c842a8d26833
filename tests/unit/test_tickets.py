"""Pure parts of the 12345 path: masking, the taxonomy, Open311 form reading."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.taxonomy import taxonomy
from services.tickets.open311 import Open311Error, ticket_from_form
from services.tickets.privacy import mask_name, mask_phone

NOW = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三丰", "张**"), ("李四", "李*"), ("Lee", "L**"), ("王", "王*"), (None, None)],
)
def test_names_keep_only_their_first_character(name: str | None, masked: str | None) -> None:
    assert mask_name(name) == masked


@pytest.mark.parametrize(
    ("phone", "masked"),
    [("13812345678", "138****5678"), ("138-1234-5678", "138****5678"), ("020-1234", "*****34"),
     ("", "")],
)  # fmt: skip
def test_phones_keep_only_their_ends(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


def test_taxonomy_covers_the_ten_12345_categories() -> None:
    names = {c.name_zh for c in taxonomy().categories}
    assert names == {
        "市容环卫", "道路交通", "排水防涝", "噪声扰民", "园林绿化",
        "供水供电", "燃气安全", "违法建设", "环境污染", "公共安全",
    }  # fmt: skip
    category, service = taxonomy().service("utilities.power_outage") or (None, None)
    assert category is not None
    assert service is not None
    assert service.department == "供电局"  # a subcategory may go elsewhere than its category
    assert taxonomy().service("nope") is None


def test_an_open311_form_becomes_a_ticket() -> None:
    ticket = ticket_from_form(
        {"service_code": ["gas.leak"], "lat": ["23.1"], "long": ["113.3"], "phone": ["110"]}, NOW
    )
    assert ticket.category == "gas.leak"
    assert ticket.urgent
    assert ticket.description == "燃气泄漏"
    assert ticket.caller.phone == "110"
    assert ticket.location.lat == 23.1


def test_an_open311_form_without_a_place_is_refused() -> None:
    with pytest.raises(Open311Error, match="location is required") as caught:
        ticket_from_form({"service_code": ["gas.leak"]}, NOW)
    assert caught.value.code == 400


def test_a_hotline_export_imports_row_by_row_with_reasons() -> None:
    from services.tickets.importer import parse, ticket_id_for

    text = (
        "external_id,category,description,reported_at,district,lat,lon,caller_phone,urgent\n"
        "GZ-1,drainage.waterlogging,积水,2026-11-20T08:00:00+08:00,tianhe,23.1,113.3,13800000000,\n"
        "GZ-2,no.such,x,2026-11-20T08:00:00+08:00,,,,,\n"
        ",noise.construction,夜间施工,2026-11-20T08:00:00+08:00,,,,,\n"
        "GZ-4,noise.construction,夜间施工,yesterday,,,,,\n"
        "GZ-5,noise.construction,夜间施工,2026-11-20T23:00:00+08:00,haizhu,north,,,是\n"
        "GZ-6,noise.construction,夜间施工,2026-11-20T23:00:00+08:00,haizhu,,,,是\n"
    )
    batch = parse(text, ndjson=False)
    assert [t.external_id for t in batch.tickets] == ["GZ-1", "GZ-6"]
    assert batch.tickets[0].ticket_id == ticket_id_for("GZ-1")  # same export, same ids
    assert batch.tickets[0].urgent  # the service's default
    assert batch.tickets[1].urgent  # 是
    assert [(e.row, e.field) for e in batch.errors] == [
        (2, "category"),
        (3, "external_id"),
        (4, "reported_at"),
        (5, "location.lat"),
    ]


def test_json_lines_exports_too() -> None:
    from services.tickets.importer import parse

    text = (
        '{"external_id": "A", "category": "gas.leak", "description": "煤气味",'
        ' "reported_at": "2026-11-20T00:00:00Z", "address": "海珠区"}\n'
        "[1]\n{broken\n"
    )
    batch = parse(text, ndjson=True)
    assert [t.external_id for t in batch.tickets] == ["A"]
    assert [(e.row, e.reason.split(":")[0]) for e in batch.errors] == [
        (2, "expected a JSON object"),
        (3, "not valid JSON"),
    ]
