"""Without its database the API still answers, with 503 and Retry-After, never a 500."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.local.processes import free_port
from tests.integration.conftest import serving, stack_env

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
    with (
        serving("api", env, port, workdir / f"api-{port}.log") as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        for path in ("/health", "/api/v1/alerts", "/api/v1/scopes/city/city/readings/latest"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["Retry-After"] == "5"
            assert "database is unavailable" in response.json()["detail"]
