"""Without its database the API still answers, with 503 and Retry-After, never a 500."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.local.processes import free_port, wait_for_port
from tests.integration.conftest import ROOT, stack_env

pytestmark = pytest.mark.integration


def test_api_answers_503_while_the_database_is_unreachable(workdir: Path) -> None:
    port = free_port()
    nothing_there = f"postgresql://city_vitals@127.0.0.1:{free_port()}/city_vitals"
    env = stack_env(
        "127.0.0.1:1",
        nothing_there,
        "unused",
        CITY_VITALS_API__PORT=str(port),
        CITY_VITALS_DB__ACQUIRE_TIMEOUT="1",
    )
    log = workdir / f"api-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "api"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, what="api", log=log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for path in ("/health", "/api/v1/alerts", "/api/v1/scopes/city/city/readings/latest"):
                response = client.get(path)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["Retry-After"] == "5"
                assert "database is unavailable" in response.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(30)
