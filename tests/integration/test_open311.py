"""12345 tickets over Open311 GeoReport v2: real ingest and writer processes, real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest import simulator
from ingest.city.scenarios import Running, ScenarioName
from ingest.simulator import Counts, write_control
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from tests.integration.conftest import (
    eventually,
    fresh_database,
    issue_key,
    serving,
    spawn,
    stack_env,
)

pytestmark = pytest.mark.integration


@dataclass
class Open311:
    base: str
    hotline: str  # tickets:write
    supervisor: str  # pii:read
    device: str  # readings:write
    gateway: str  # readings:write and tickets:write, as the simulated city's


@pytest.fixture(scope="module")
def open311(broker: LocalBroker, postgres: LocalPostgres, workdir: Path) -> Iterator[Open311]:
    db_url = fresh_database(postgres)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = stack_env(broker.bootstrap, db_url, prefix, CITY_VITALS_INGEST__PORT=str(port))
    writer = spawn("writer", env, workdir / f"{prefix}-writer.log")
    try:
        with serving("ingest", env, port, workdir / f"{prefix}-ingest.log") as url:
            yield Open311(
                base=f"{url}/open311/v2",
                hotline=issue_key(db_url, "tickets:write"),
                supervisor=issue_key(db_url, "pii:read"),
                device=issue_key(db_url, "readings:write"),
                gateway=issue_key(db_url, "readings:write", "tickets:write"),
            )
    finally:
        writer.terminate()
        writer.wait(30)


def test_services_list_the_taxonomy(open311: Open311) -> None:
    services = httpx.get(f"{open311.base}/services.json").json()
    codes = {s["service_code"] for s in services}
    assert {"drainage.waterlogging", "noise.construction", "gas.leak"} <= codes
    flood = next(s for s in services if s["service_code"] == "drainage.waterlogging")
    assert flood["service_name"] == "路面积水"
    assert flood["group"] == "排水防涝"
    assert {"metadata", "type", "keywords", "description"} <= set(flood)
    definition = httpx.get(f"{open311.base}/services/gas.leak.json").json()
    assert definition == {
        "service_code": "gas.leak",
        "attributes": [],
        "department": "住房和城乡建设局",
    }
    unknown = httpx.get(f"{open311.base}/services/no.such.json")
    assert unknown.status_code == 404
    assert "no.such" in unknown.json()[0]["description"]


def test_a_form_post_becomes_a_stored_request_with_the_caller_masked(open311: Open311) -> None:
    posted = httpx.post(
        f"{open311.base}/requests.json",
        data={
            "api_key": open311.hotline,
            "service_code": "drainage.waterlogging",
            "lat": "23.129",
            "long": "113.270",
            "address_string": "越秀区北京路 88 号",
            "description": "北京路口积水约 30 厘米，车辆无法通行",
            "first_name": "三丰",
            "last_name": "张",
            "phone": "13812345678",
            "attribute[district]": "yuexiu",
        },
    )
    assert posted.status_code == 201, posted.text
    [receipt] = posted.json()
    request_id = receipt["service_request_id"]

    def fetch(**params: str) -> httpx.Response:
        return httpx.get(f"{open311.base}/requests/{request_id}.json", params=params)

    eventually(lambda: fetch().status_code == 200, timeout=30)
    [public] = fetch().json()
    assert public["status"] == "open"
    assert public["service_code"] == "drainage.waterlogging"
    assert public["agency_responsible"] == "水务局"
    assert (public["lat"], public["long"]) == (23.129, 113.27)
    extension = public["extended_attributes"]
    assert extension["stage"] == "reported"
    assert extension["urgent"] is True
    assert extension["district"] == "yuexiu"
    assert extension["caller"] == {"name": "张**", "phone": "138****5678", "masked": True}
    assert "13812345678" not in fetch().text

    [trusted] = fetch(api_key=open311.supervisor).json()
    assert trusted["extended_attributes"]["caller"] == {
        "name": "张三丰",
        "phone": "13812345678",
        "masked": False,
    }


def test_json_posts_and_searches(open311: Open311) -> None:
    ids = []
    for code in ("noise.construction", "noise.construction", "gas.leak"):
        posted = httpx.post(
            f"{open311.base}/requests.json",
            json={"service_code": code, "address_string": "天河区林和西路", "phone": "020-1234"},
            headers={"Authorization": f"Bearer {open311.hotline}"},
        )
        assert posted.status_code == 201, posted.text
        ids.append(posted.json()[0]["service_request_id"])

    def search(**params: str | int) -> list[dict[str, object]]:
        found: list[dict[str, object]] = httpx.get(
            f"{open311.base}/requests.json", params=params
        ).json()
        return found

    eventually(lambda: len(search(service_request_id=",".join(ids))) == 3, timeout=30)
    noise = search(service_code="noise.construction", status="open")
    assert {r["service_request_id"] for r in noise} == set(ids[:2])
    assert noise[0]["description"] == "施工噪声"  # no description given: the service's name
    first = search(service_code="noise.construction", page_size=1)
    second = search(service_code="noise.construction", page_size=1, page=2)
    assert len(first) == len(second) == 1
    assert first[0]["service_request_id"] != second[0]["service_request_id"]


@pytest.mark.parametrize(
    ("fields", "key", "code", "words"),
    [
        ({"service_code": "drainage.waterlogging", "lat": "23.1", "long": "113.2"}, None, 401,
         "api_key is required"),
        ({"service_code": "drainage.waterlogging", "lat": "23.1", "long": "113.2"}, "device",
         403, "tickets:write"),
        ({"lat": "23.1", "long": "113.2"}, "hotline", 400, "service_code is required"),
        ({"service_code": "no.such", "lat": "23.1", "long": "113.2"}, "hotline", 404,
         "unknown service_code"),
        ({"service_code": "gas.leak"}, "hotline", 400, "a location is required"),
        ({"service_code": "gas.leak", "lat": "north", "long": "1"}, "hotline", 400,
         "lat must be a number"),
        ({"service_code": "gas.leak", "lat": "95", "long": "1"}, "hotline", 400, "lat"),
        ({"service_code": "gas.leak", "address_string": "x", "media_url": "ftp://x"}, "hotline",
         400, "media_url"),
    ],
)  # fmt: skip
def test_bad_posts_get_open311_errors(
    open311: Open311, fields: dict[str, str], key: str | None, code: int, words: str
) -> None:
    data = dict(fields)
    if key is not None:
        data["api_key"] = getattr(open311, key)
    response = httpx.post(f"{open311.base}/requests.json", data=data)
    assert response.status_code == code, response.text
    [error] = response.json()
    assert error["code"] == code
    assert words in error["description"]


def test_bad_searches_get_open311_errors(open311: Open311) -> None:
    for params, words in (
        ({"start_date": "2026-11-01T00:00:00"}, "start_date"),
        ({"status": "pending"}, "open or closed"),
        ({"service_request_id": "nope"}, "request ids"),
        ({"page_size": "5000"}, "page_size"),
    ):
        response = httpx.get(f"{open311.base}/requests.json", params=params)
        assert response.status_code == 400, (params, response.text)
        assert words in response.json()[0]["description"]
    missing = httpx.get(f"{open311.base}/requests/{uuid.uuid4()}.json")
    assert missing.status_code == 404
    assert missing.json()[0]["code"] == 404


EXPORT = (
    "external_id,category,description,reported_at,district,caller_name,caller_phone\n"
    "GZ12345-001,drainage.waterlogging,江南大道积水,2026-11-20T08:00:00+08:00,haizhu,王五,13900001111\n"
    "GZ12345-002,nope.nope,x,2026-11-20T08:00:00+08:00,haizhu,,\n"
    "GZ12345-003,noise.neighbourhood,楼上噪音,2026-11-20T23:30:00+08:00,liwan,,\n"
)


def test_bulk_import_by_api_is_per_row_and_idempotent(open311: Open311) -> None:
    url = open311.base.replace("/open311/v2", "/api/v1/tickets/import")
    headers = {"Authorization": f"Bearer {open311.hotline}", "content-type": "text/csv"}
    first = httpx.post(url, content=EXPORT.encode(), headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["imported"] == 2
    assert first.json()["errors"] == [
        {"row": 2, "field": "category", "reason": "unknown service code 'nope.nope'"}
    ]
    again = httpx.post(url, content=EXPORT.encode(), headers=headers)
    assert again.json()["imported"] == 2

    def imported() -> list[dict[str, object]]:
        found: list[dict[str, object]] = httpx.get(
            f"{open311.base}/requests.json",
            params={"start_date": "2026-11-19T00:00:00Z", "end_date": "2026-11-22T00:00:00Z"},
        ).json()
        return found

    eventually(lambda: len(imported()) == 2, timeout=30)
    time.sleep(1)  # the repeated import had time to arrive: still one ticket per row
    rows = imported()
    assert len(rows) == 2
    assert {r["extended_attributes"]["channel"] for r in rows} == {"import"}  # type: ignore[index]
    wrong = httpx.post(url, content=b"x", headers={**headers, "content-type": "text/plain"})
    assert wrong.status_code == 415
    device = httpx.post(
        url,
        content=EXPORT.encode(),
        headers={**headers, "Authorization": f"Bearer {open311.device}"},
    )
    assert device.status_code == 403


def test_the_simulated_city_feeds_readings_and_calls_through_a_typhoon(
    open311: Open311, workdir: Path
) -> None:
    control = workdir / "scenario.json"
    write_control(control, Running(ScenarioName.TYPHOON, time.time() - 20 * 60, minutes=30))

    async def feed() -> Counts:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(3.0, stop.set)
        return await simulator.run(
            open311.base.removesuffix("/open311/v2"),
            rate=2000,
            stop=stop,
            key=open311.gateway,
            control=control,
        )

    counts = asyncio.run(feed())
    assert counts.accepted >= 2000
    assert counts.refused == 0
    assert counts.tickets >= 1  # the typhoon's flood of 排水防涝 calls
