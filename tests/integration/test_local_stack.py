"""The README's first command: the whole platform locally, an alert served within seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas.topics import Topics
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port, port_open, wait_for_port
from tests.integration.conftest import ROOT, eventually, fresh_database

pytestmark = pytest.mark.integration


class Local:
    """``city-vitals local`` run as a user would, on ports of its own."""

    def __init__(self, workdir: Path, **settings: str) -> None:
        self.data_dir = workdir / f"local-{uuid.uuid4().hex[:6]}"
        self.api_port, self.ingest_port, self.broker_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
        self.env.update(
            CITY_VITALS_API__PORT=str(self.api_port),
            CITY_VITALS_INGEST__PORT=str(self.ingest_port),
            CITY_VITALS_LOCAL__BROKER_PORT=str(self.broker_port),
            CITY_VITALS_LOCAL__POSTGRES_PORT=str(free_port()),
            CITY_VITALS_LOCAL__MQTT_PORT=str(free_port()),
            # The test's made-up devices are not in the registry.
            CITY_VITALS_INGEST__REQUIRE_REGISTERED_DEVICES="false",
            **settings,
        )
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.ingest = f"http://127.0.0.1:{self.ingest_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = workdir / f"{self.data_dir.name}.out"

    def start(self, *flags: str) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli",
                    "local",
                    "--data-dir",
                    str(self.data_dir),
                    *flags,
                ],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port("127.0.0.1", self.api_port, timeout=90, what="local API", log=self.output)
        wait_for_port(
            "127.0.0.1", self.ingest_port, timeout=90, what="local ingest", log=self.output
        )

    def stop(self) -> str:
        """Ctrl-C, and check that it exits 0 leaving no process behind."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        text = self.output.read_text(errors="replace")
        assert self.proc.returncode == 0, text
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after Ctrl-C: {alive}"
        self.proc = None
        return text

    def post(self, client: httpx.Client, body: list[dict[str, object]]) -> None:
        # The stack issues a gateway key at every start and keeps it in its data directory.
        key = (self.data_dir / "gateway.key").read_text(encoding="utf-8").strip()
        response = client.post(
            f"{self.ingest}/api/v1/readings", json=body, headers={"X-API-Key": key}
        )
        assert response.status_code == 202, response.text

    def alerts(self, client: httpx.Client, device: str) -> list[dict[str, object]]:
        page = client.get(f"{self.api}/api/v1/alerts", params={"scope_id": device}).json()
        return list(page["items"])

    def latest(self, client: httpx.Client, scope: str) -> list[dict[str, object]]:
        page = client.get(f"{self.api}/api/v1/scopes/{scope}/readings/latest").json()
        return list(page["items"])


def partitions(bootstrap: str, topic: str) -> set[int]:
    async def ask() -> set[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [found] = await admin.describe_topics([topic])
            return {p["partition"] for p in found["partitions"]}
        finally:
            await admin.close()

    return asyncio.run(ask())


def depth(device: str, values: list[float]) -> list[dict[str, object]]:
    """Readings a second apart, and the last value again two minutes on: the rules engine
    closes a window once its partition's event time passes it by the allowed lateness, and
    the test should not wait for the simulated city's clock to get there (two minutes, not
    more: the device would count as quiet and raise a no-data alert)."""
    now = datetime.now(UTC)
    times = [now + timedelta(seconds=i) for i in range(len(values))]
    return [
        {
            "device_id": device,
            "metric": "waterlogging_depth",
            "value": v,
            "unit": "cm",
            "ts": at.isoformat(),
        }
        for at, v in [*zip(times, values, strict=True), (now + timedelta(minutes=2), values[-1])]
    ]


def test_local_stack_serves_an_alert_stops_cleanly_and_keeps_its_data(workdir: Path) -> None:
    local = Local(workdir)
    device = f"wl-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    local.start("--fresh")
    try:
        with httpx.Client(timeout=30) as client:
            posted = time.monotonic()
            local.post(client, depth(device, [2, 60]))
            eventually(lambda: [a["level"] for a in local.alerts(client, device)] == ["red"])
            print(
                f"local stack: serving after {posted - started:.1f}s, "
                f"alert visible {time.monotonic() - posted:.1f}s after the reading"
            )
            # The simulated city is feeding it too.
            eventually(lambda: local.latest(client, "district/tianhe"))
        # One partition a topic on the embedded broker: each post is one stored batch.
        assert partitions(f"127.0.0.1:{local.broker_port}", Topics().readings) == {0}
    finally:
        output = local.stop()
    assert "city-vitals is running" in output
    assert "city-vitals stopped." in output

    # Again without --fresh: PostgreSQL kept its data; the broker started empty and new
    # readings are stored, not skipped by offsets kept from the previous run.
    local.start("--no-simulate")
    try:
        with httpx.Client(timeout=30) as client:
            assert [a["level"] for a in local.alerts(client, device)] == ["red"]
            later = f"{device}-b"
            local.post(client, depth(later, [1]))
            eventually(lambda: local.latest(client, f"device/{later}"))
    finally:
        local.stop()


def test_pointing_the_local_stack_at_other_parts_is_configuration_only(
    workdir: Path, broker: LocalBroker, postgres: LocalPostgres
) -> None:
    db_url = fresh_database(postgres)
    local = Local(
        workdir,
        CITY_VITALS_LOCAL__EMBEDDED_BROKER="false",
        CITY_VITALS_LOCAL__EMBEDDED_POSTGRES="false",
        CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
        CITY_VITALS_KAFKA__TOPIC_PREFIX=f"ext{uuid.uuid4().hex[:6]}",
        CITY_VITALS_DB__URL=db_url,
    )
    device = f"ext-{uuid.uuid4().hex[:6]}"
    local.start("--no-simulate")
    try:
        with httpx.Client(timeout=30) as client:
            local.post(client, depth(device, [33]))
            eventually(lambda: local.alerts(client, device))
    finally:
        output = local.stop()
    assert f"Kafka          {broker.bootstrap} (external)" in output
    assert not (local.data_dir / "postgres").exists()
    # It used those parts without owning them: they are still up.
    assert port_open("127.0.0.1", broker.port)
    assert port_open("127.0.0.1", postgres.port)
