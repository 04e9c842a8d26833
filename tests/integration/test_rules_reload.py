"""A running rules engine picks up definition changes and emergency mode from PostgreSQL
without a restart."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest

from tests.integration.conftest import ROOT, Stack, eventually
from tests.integration.test_pipeline import ahead, closing, firing_alerts, reading

pytestmark = pytest.mark.integration


def cli(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(
    stack: Stack, client: httpx.Client, device: str, value: float, district: str, hours: int
) -> None:
    """One window's reading and a later one that closes it (see test_pipeline.ahead)."""
    at = ahead(hours)
    where = {"location": {"district": district}}
    body = [{**reading(device, value, at), **where}, {**closing(device, value, at), **where}]
    response = client.post(
        f"{stack.ingest_url}/api/v1/readings",
        json=body,
        headers={"Authorization": f"Bearer {stack.key}"},
    )
    assert response.status_code == 202, response.text


def test_definitions_and_emergency_mode_apply_without_restart(
    stack: Stack, client: httpx.Client
) -> None:
    cli(stack, "indicators", "load", "--reason", "initial")
    eventually(lambda: "definitions version 43" in stack.log("rules"))

    # Before the switch tianhe is judged by the normal thresholds (blue at 10) ...
    calm = f"wl-{uuid.uuid4().hex[:6]}"
    send(stack, client, calm, 12.0, "tianhe", hours=1)
    [before] = eventually(lambda: firing_alerts(client, stack, calm))
    assert before["threshold"] == 10.0
    # ... until emergency mode tightens blue to 5 cm in that district only.
    cli(stack, "emergency", "tianhe", "on", "--reason", "暴雨红色预警")
    eventually(lambda: "emergency: tianhe" in stack.log("rules"))
    other = f"wl-{uuid.uuid4().hex[:6]}"
    send(stack, client, other, 12.0, "yuexiu", hours=2)
    tense = f"wl-{uuid.uuid4().hex[:6]}"
    send(stack, client, tense, 7.0, "tianhe", hours=3)
    [alert] = eventually(lambda: firing_alerts(client, stack, tense))
    assert alert["level"] == "blue"
    assert alert["threshold"] == 5.0
    # A district still in normal mode is judged by the normal thresholds (blue at 10).
    [normal] = eventually(lambda: firing_alerts(client, stack, other))
    assert normal["threshold"] == 10.0
