"""A running rules engine picks up definition changes and emergency mode from PostgreSQL
without a restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import cast

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from rules.consumer import RulesHandler, watch_definitions
from rules.engine import Definitions
from rules.indicators import Catalogue
from services.config import DatabaseSettings, RulesSettings, Settings
from services.indicators import store
from services.local.postgres import LocalPostgres
from tests.integration.conftest import ROOT, Stack, eventually, fresh_database
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


class Using:
    """Stands in for the engine: records the definitions it is told to use."""

    def __init__(self) -> None:
        self.used: list[Definitions] = []

    def use(self, definitions: Definitions) -> None:
        self.used.append(definitions)


def test_the_definitions_watch_keeps_one_connection_and_gets_a_new_one_when_it_is_lost(
    postgres: LocalPostgres,
) -> None:
    url = fresh_database(postgres)
    settings = Settings(
        db=DatabaseSettings(url=SecretStr(url)),
        rules=RulesSettings(definitions_poll_seconds=0.05),
    )
    others = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    async def scenario() -> None:
        stop, engine = asyncio.Event(), Using()
        watch = asyncio.create_task(watch_definitions(settings, cast(RulesHandler, engine), stop))
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

            async def watchers() -> list[int]:
                return [pid for (pid,) in await (await conn.execute(others)).fetchall()]

            async def until(check: Callable[[], Awaitable[bool]]) -> None:
                for _ in range(300):
                    if await check():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("not within 15 s")

            catalogue = Catalogue.from_yaml(settings.rules.catalogue)
            await store.load_catalogue(conn, catalogue, by="test", reason="start")

            async def used(count: int) -> bool:
                return len(engine.used) >= count

            await until(lambda: used(1))
            first = await watchers()
            await asyncio.sleep(0.5)  # ten polls
            assert await watchers() == first, "the watch opened a new connection per poll"
            await conn.execute("SELECT pg_terminate_backend(%s)", (first[0],))
            await store.set_emergency(conn, "tianhe", active=True, by="test", reason="暴雨")
            await until(lambda: used(2))
            assert engine.used[-1].emergency_districts == {"tianhe"}
            assert (await watchers()) not in ([], first)
            stop.set()
            await watch

            async def closed() -> bool:
                return await watchers() == []

            await until(closed)

    asyncio.run(scenario())
