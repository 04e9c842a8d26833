"""When the broker cannot take data, ingest answers 503 with Retry-After, never a 2xx."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from tests.integration.conftest import fresh_database, issue_key, serving, stack_env

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(workdir: Path) -> Iterator[LocalBroker]:
    server = LocalBroker(free_port(), workdir / f"broker-{uuid.uuid4().hex[:6]}.log")
    server.start()
    yield server
    server.stop()


def test_ingest_answers_503_while_the_broker_is_down_and_recovers(
    own_broker: LocalBroker, postgres: LocalPostgres, workdir: Path
) -> None:
    port = free_port()
    db_url = fresh_database(postgres)
    headers = {"Authorization": f"Bearer {issue_key(db_url, 'readings:write')}"}
    hotline = issue_key(db_url, "tickets:write")
    env = stack_env(
        own_broker.bootstrap,
        db_url,
        f"t{uuid.uuid4().hex[:8]}",
        CITY_VITALS_INGEST__PORT=str(port),
        CITY_VITALS_INGEST__DELIVERY_TIMEOUT_SECONDS="3",
        CITY_VITALS_INGEST__RETRY_AFTER_SECONDS="7",
        CITY_VITALS_KAFKA__REQUEST_TIMEOUT_MS="2000",
    )
    with serving("ingest", env, port, workdir / f"ingest-{port}.log") as base:
        url = f"{base}/api/v1/readings"

        def body() -> list[dict[str, object]]:
            # A new reading each time: a repeat would be recognised as a retry.
            return [
                {
                    "device_id": "d-1",
                    "metric": "aqi",
                    "value": 80,
                    "unit": "AQI",
                    "ts": datetime.now(UTC).isoformat(),
                }
            ]

        with httpx.Client(timeout=30, headers=headers) as client:
            assert client.post(url, json=body()).status_code == 202

            own_broker.stop()
            down = client.post(url, json=body())
            assert down.status_code == 503, down.text
            assert down.headers["Retry-After"] == "7"
            assert "nothing from this request was accepted" in down.json()["detail"]
            # Open311 clients get the same answer in Open311's error format.
            ticket = client.post(
                f"{base}/open311/v2/requests.json",
                data={"api_key": hotline, "service_code": "gas.leak", "address_string": "x"},
            )
            assert ticket.status_code == 503, ticket.text
            assert ticket.headers["Retry-After"] == "7"
            assert ticket.json()[0]["code"] == 503

            own_broker.start()
            # The producer reconnects by itself; a retry after the advised wait goes through.
            statuses = []
            for _ in range(20):
                statuses.append(client.post(url, json=body()).status_code)
                if statuses[-1] == 202:
                    break
            assert statuses[-1] == 202, statuses
            assert set(statuses) <= {202, 503}
