"""Real parts, started once per test run: a Kafka-protocol broker and PostgreSQL.

Each test module gets its own database (cloned from a migrated template) and its own topic
namespace, so tests share the servers but not their data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import psycopg
import pytest
from aiokafka import TopicPartition
from pydantic import SecretStr

from ingest.batch import frames, sort_items
from schemas.readings import SensorReading, frame_readings, read_frame
from services.config import DatabaseSettings, KafkaSettings
from services.db import migrate
from services.kafka import is_tick
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Under /tmp and world-traversable: as root, PostgreSQL runs as 'nobody' and must reach it.
    path = Path(tempfile.mkdtemp(prefix="city-vitals-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("CITY_VITALS_KEEP_TEST_DIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(workdir: Path) -> Iterator[LocalBroker]:
    server = LocalBroker(free_port(), workdir / "broker.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(workdir: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres(workdir / "pg", free_port(), workdir / "postgres.log")
    server.start()
    url = server.create_database("template_city_vitals")
    migrate(DatabaseSettings(url=SecretStr(url)))
    yield server
    server.stop()


def fresh_database(postgres: LocalPostgres) -> str:
    """A new database with the current schema, cloned from the migrated template."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}", template="template_city_vitals")


def issue_key(db_url: str, *scopes: str, device: str | None = None) -> str:
    """A real API key in the given database."""
    from services.auth.models import ApiKeyCreate
    from services.auth.service import issue_sync

    request = ApiKeyCreate.model_validate(
        {"name": f"test {uuid.uuid4().hex[:6]}", "scopes": list(scopes), "device_id": device}
    )
    return issue_sync(db_url, request=request, by="tests").key


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A platform service as a real process (``city-vitals COMMAND``), output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )


@contextmanager
def serving(command: str, env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Run one HTTP service until the block ends; yields its base URL."""
    proc = spawn(command, env, log)
    try:
        wait_for_port("127.0.0.1", port, timeout=60, what=command, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class Stack:
    """The platform's services as real processes against the shared broker and PostgreSQL."""

    env: dict[str, str]
    logs: Path
    kafka: KafkaSettings
    db_url: str
    ingest_url: str
    api_url: str
    key: str  # readings:write, for posting to ingest
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: str | None = None) -> None:
        self.processes[name] = spawn(command or name, self.env, self.logs / f"{name}.log")

    def stop(self, name: str, *, kill: bool = False) -> None:
        proc = self.processes.pop(name)
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(30)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.db_url) as conn:
            return conn.execute(sql, params).fetchall()


def stack_env(broker: str, db_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
    env.update(
        CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS=broker,
        CITY_VITALS_KAFKA__TOPIC_PREFIX=prefix,
        CITY_VITALS_KAFKA__PARTITIONS="3",
        CITY_VITALS_DB__URL=db_url,
        CITY_VITALS_RULES__CONSUMER_GROUP=f"{prefix}-rules",
        CITY_VITALS_WRITER__CONSUMER_GROUP=f"{prefix}-writer",
        # Tests make up devices freely; the registry's own test turns this back on.
        CITY_VITALS_INGEST__REQUIRE_REGISTERED_DEVICES="false",
        # Alert tests write hours ahead, each in its own event time (see test_pipeline.ahead).
        CITY_VITALS_INGEST__MAX_FUTURE_SECONDS="86400",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def stack(broker: LocalBroker, postgres: LocalPostgres, workdir: Path) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    logs = workdir / prefix
    logs.mkdir()
    db_url = fresh_database(postgres)
    ingest_port, api_port = free_port(), free_port()
    env = stack_env(
        broker.bootstrap,
        db_url,
        prefix,
        CITY_VITALS_INGEST__PORT=str(ingest_port),
        CITY_VITALS_API__PORT=str(api_port),
        CITY_VITALS_INGEST__MAX_BODY_BYTES=str(1024 * 1024),
    )
    running = Stack(
        env=env,
        logs=logs,
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=3),
        db_url=db_url,
        ingest_url=f"http://127.0.0.1:{ingest_port}",
        api_url=f"http://127.0.0.1:{api_port}",
        key=issue_key(db_url, "readings:write"),
    )
    for name in ("ingest", "rules", "writer", "api"):
        running.start(name)
    try:
        wait_for_port("127.0.0.1", ingest_port, timeout=60, what="ingest", log=logs / "ingest.log")
        wait_for_port("127.0.0.1", api_port, timeout=60, what="api", log=logs / "api.log")
        yield running
    finally:
        for name in list(running.processes):
            running.stop(name)


def eventually(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.25) -> T:
    """Poll ``check()`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last and time.monotonic() < deadline:
        time.sleep(interval)
        last = check()
    if not last:
        raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
    return last


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as c:
        yield c


def produce_raw(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    """Put raw bytes on a topic, as a faulty or hostile producer would."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(topic, value, key=b"poison")
        finally:
            await producer.stop()

    asyncio.run(produce())


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    at_least: int,
    timeout: float = 20.0,
    count: Callable[[bytes], int] = lambda value: 1,
) -> list[bytes]:
    """Every record value on a topic, waiting until there are at least ``at_least`` (as
    ``count`` counts a record) and every record already on the topic when it looked has been
    read (a slow machine must not make it stop at the first batch)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            ends: dict[TopicPartition, int] = {}
            while asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                values += [
                    r.value
                    for records in batch.values()
                    for r in records
                    if r.value and not is_tick(r)
                ]
                assigned = consumer.assignment()
                if assigned and not ends:
                    ends = await consumer.end_offsets(list(assigned))
                positions = [await consumer.position(tp) for tp in ends]
                caught_up = bool(ends) and all(
                    p >= end for p, end in zip(positions, ends.values(), strict=True)
                )
                if sum(map(count, values)) >= at_least and caught_up:
                    break
        finally:
            await consumer.stop()
        return values

    return asyncio.run(read())


def read_readings(
    kafka: KafkaSettings, *, at_least: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Every reading in the frames on the readings topic (as ``SensorReading`` data), waiting
    for at least ``at_least`` of them."""
    values = read_topic(
        kafka, kafka.topics.readings, at_least=at_least, timeout=timeout,
        count=lambda value: len(orjson.loads(value)["ts"]),
    )  # fmt: skip
    return [reading for value in values for reading in frame_readings(read_frame(value))]


def frame_of(*readings: SensorReading | Mapping[str, Any]) -> bytes:
    """Readings in one frame of the readings topic, as ingest puts them there (units made
    canonical; a reading ingest would refuse is an error in the test)."""
    items = [r.model_dump(mode="json") if isinstance(r, SensorReading) else r for r in readings]
    result = sort_items(items)
    assert not result.rejected, result.rejected
    [frame] = frames(result.accepted, size=len(items))
    return frame
