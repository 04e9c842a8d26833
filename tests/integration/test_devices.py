"""The device registry end to end: registered by API and CLI, enforced by ingest."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from services.config import KafkaSettings
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from tests.integration.conftest import (
    ROOT,
    eventually,
    fresh_database,
    issue_key,
    read_readings,
    serving,
    stack_env,
)

pytestmark = pytest.mark.integration


class Setup:
    def __init__(self, env: dict[str, str], db_url: str, kafka: KafkaSettings) -> None:
        self.env = env
        self.db_url = db_url
        self.kafka = kafka
        self.admin = {"Authorization": f"Bearer {issue_key(db_url, 'admin')}"}
        self.gateway = {"Authorization": f"Bearer {issue_key(db_url, 'readings:write')}"}
        self.api = ""
        self.ingest = ""


@pytest.fixture(scope="module")
def setup(broker: LocalBroker, postgres: LocalPostgres, workdir: Path) -> Iterator[Setup]:
    db_url = fresh_database(postgres)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    api_port, ingest_port = free_port(), free_port()
    env = stack_env(
        broker.bootstrap,
        db_url,
        prefix,
        CITY_VITALS_API__PORT=str(api_port),
        CITY_VITALS_INGEST__PORT=str(ingest_port),
        CITY_VITALS_INGEST__REQUIRE_REGISTERED_DEVICES="true",
        CITY_VITALS_INGEST__REGISTRY_REFRESH_SECONDS="0.5",
    )
    s = Setup(env, db_url, KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix))
    with (
        serving("api", env, api_port, workdir / f"{prefix}-api.log") as api,
        serving("ingest", env, ingest_port, workdir / f"{prefix}-ingest.log") as ingest,
    ):
        s.api, s.ingest = api, ingest
        yield s


def post(setup: Setup, device: str) -> dict[str, object]:
    body = [
        {
            "device_id": device,
            "metric": "waterlogging_depth",
            "value": 3.0,
            "unit": "cm",
            "ts": datetime.now(UTC).isoformat(),
        }
    ]
    response = httpx.post(
        f"{setup.ingest}/api/v1/readings", json=body, headers=setup.gateway, timeout=30
    )
    assert response.status_code in (202, 422), response.text
    answer: dict[str, object] = response.json()
    return answer


def test_ingest_accepts_registered_devices_only_and_fills_their_place(setup: Setup) -> None:
    device = f"wl-{uuid.uuid4().hex[:6]}"
    refused = post(setup, device)
    assert refused["accepted"] == 0
    assert "is not registered" in str(refused["rejected"])

    registered = httpx.put(
        f"{setup.api}/api/v1/devices",
        json=[{"device_id": device, "device_type": "waterlogging_gauge", "district": "yuexiu",
               "grid": "yx-g07", "lon": 113.27, "lat": 23.13, "owner_department": "水务局"}],
        headers=setup.admin, timeout=30,
    )  # fmt: skip
    assert registered.json() == {"registered": 1}
    eventually(lambda: post(setup, device)["accepted"] == 1, timeout=10)

    on_topic = read_readings(setup.kafka, at_least=1)
    mine = [r for r in on_topic if r["device_id"] == device]
    assert mine
    assert mine[0]["location"]["district"] == "yuexiu"
    assert mine[0]["location"]["grid"] == "yx-g07"

    disabled = httpx.patch(
        f"{setup.api}/api/v1/devices/{device}",
        json={"status": "disabled"},
        headers=setup.admin,
        timeout=30,
    )
    assert disabled.json()["status"] == "disabled"
    eventually(lambda: "is disabled" in str(post(setup, device)["rejected"]), timeout=10)


def test_registry_changes_need_an_admin_key_and_valid_records(setup: Setup) -> None:
    url = f"{setup.api}/api/v1/devices"
    assert httpx.get(url, headers=setup.gateway).status_code == 403
    bad = httpx.put(url, json=[{"device_id": "x y", "device_type": "t"}], headers=setup.admin)
    assert bad.status_code == 422
    unknown = httpx.patch(f"{url}/nope", json={"status": "disabled"}, headers=setup.admin)
    assert unknown.status_code == 404


def test_cli_imports_csv_and_names_bad_rows(setup: Setup, workdir: Path) -> None:
    good = workdir / "devices.csv"
    good.write_text(
        "device_id,device_type,lon,lat,district\n"
        "rg-1,rain_gauge,113.3,23.1,tianhe\n"
        "rg-2,rain_gauge,,,haizhu\n",
        encoding="utf-8",
    )
    bad = workdir / "bad-devices.csv"
    bad.write_text(
        "device_id,device_type,lon\nrg-3,rain_gauge,east\nrg 4,rain_gauge,1\n", encoding="utf-8"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "devices", *args],
            env=setup.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    refused = run("import", str(bad))
    assert refused.returncode != 0
    assert "row 1: lon" in refused.stderr
    assert "row 2: device_id" in refused.stderr
    done = run("import", str(good))
    assert done.returncode == 0, done.stderr
    assert "registered 2 devices" in done.stdout
    listed = httpx.get(
        f"{setup.api}/api/v1/devices", params={"device_type": "rain_gauge"}, headers=setup.admin
    ).json()
    assert {d["device_id"] for d in listed["items"]} == {"rg-1", "rg-2"}
