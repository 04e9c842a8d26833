"""The README's first command: the whole platform locally, an alert served within seconds."""

from __future__ import annotations

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

from services.local.processes import free_port, wait_for_port
from tests.integration.conftest import ROOT, eventually

pytestmark = pytest.mark.integration


def start_local(data_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "local", "--data-dir", str(data_dir), *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop_local(proc: subprocess.Popen[bytes]) -> str:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after Ctrl-C: {alive}"
    return out.decode(errors="replace")


def test_local_stack_serves_an_alert_stops_cleanly_and_keeps_its_data(workdir: Path) -> None:
    data_dir = workdir / "local-stack"
    api_port, ingest_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
    env.update(
        CITY_VITALS_API__PORT=str(api_port),
        CITY_VITALS_INGEST__PORT=str(ingest_port),
        CITY_VITALS_LOCAL__BROKER_PORT=str(free_port()),
        CITY_VITALS_LOCAL__POSTGRES_PORT=str(free_port()),
    )
    api = f"http://127.0.0.1:{api_port}"
    device = f"wl-{uuid.uuid4().hex[:6]}"

    started = time.monotonic()
    proc = start_local(data_dir, env, "--fresh")
    try:
        wait_for_port("127.0.0.1", api_port, timeout=90, what="local API")
        wait_for_port("127.0.0.1", ingest_port, timeout=90, what="local ingest")
        with httpx.Client(timeout=30) as client:
            now = datetime.now(UTC)
            body = [
                {
                    "device_id": device,
                    "metric": "waterlogging_depth",
                    "value": v,
                    "unit": "cm",
                    "ts": (now + timedelta(seconds=i)).isoformat(),
                }
                for i, v in enumerate([2, 60])
            ]
            posted = time.monotonic()
            assert (
                client.post(
                    f"http://127.0.0.1:{ingest_port}/api/v1/readings", json=body
                ).status_code
                == 202
            )

            def red_alert() -> bool:
                items = client.get(f"{api}/api/v1/alerts", params={"scope_id": device}).json()[
                    "items"
                ]
                return bool(items) and items[0]["level"] == "red"

            eventually(red_alert, timeout=30)
            seconds = time.monotonic() - posted
            print(
                f"local stack: serving after {posted - started:.1f}s, "
                f"alert visible {seconds:.1f}s after the reading"
            )
            # The simulated city is feeding it too.
            eventually(
                lambda: client.get(f"{api}/api/v1/scopes/city/city/readings/latest").json()[
                    "items"
                ],
                timeout=30,
            )
    finally:
        if proc.poll() is None:
            output = stop_local(proc)
            assert "city-vitals stopped." in output

    # Run again without --fresh: PostgreSQL's data is still there.
    proc = start_local(data_dir, env)
    try:
        wait_for_port("127.0.0.1", api_port, timeout=90, what="local API (second run)")
        wait_for_port("127.0.0.1", ingest_port, timeout=90, what="local ingest (second run)")
        with httpx.Client(timeout=30) as client:
            items = client.get(f"{api}/api/v1/alerts", params={"scope_id": device}).json()["items"]
            assert [a["level"] for a in items] == ["red"]
            # The broker started empty; new readings are stored, not skipped by old offsets.
            later = f"{device}-b"
            body = [
                {
                    "device_id": later,
                    "metric": "aqi",
                    "value": 42,
                    "unit": "AQI",
                    "ts": datetime.now(UTC).isoformat(),
                }
            ]
            assert (
                client.post(
                    f"http://127.0.0.1:{ingest_port}/api/v1/readings", json=body
                ).status_code
                == 202
            )
            eventually(
                lambda: client.get(f"{api}/api/v1/scopes/device/{later}/readings/latest").json()[
                    "items"
                ],
                timeout=30,
            )
    finally:
        stop_local(proc)
