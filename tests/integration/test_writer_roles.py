"""The writer's roles run as child processes of ``city-vitals writer``: the three live and die
together, so a supervisor that restarts the writer restarts them all."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from schemas.readings import SensorReading
from services.config import KafkaSettings
from services.kafka import ensure_topics
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from tests.integration.conftest import eventually, frame_of, fresh_database, spawn, stack_env


def roles(writer: psutil.Process) -> dict[str, psutil.Process]:
    found = {}
    for child in writer.children():
        command = child.cmdline()
        if "--role" in command:
            found[command[command.index("--role") + 1]] = child
    return found


def all_roles(writer: subprocess.Popen[bytes]) -> dict[str, psutil.Process]:
    """The writer's three role processes once all have started, else nothing."""
    found = roles(psutil.Process(writer.pid))
    return found if len(found) == 3 else {}


@dataclass
class Writer:
    process: subprocess.Popen[bytes]
    roles: dict[str, psutil.Process]
    log: Path


@contextlib.contextmanager
def running_writer(env: dict[str, str], log: Path) -> Iterator[Writer]:
    process = spawn("writer", env, log)
    children: dict[str, psutil.Process] = {}
    try:
        children = eventually(lambda: all_roles(process))
        yield Writer(process, children, log)
    finally:
        process.kill()
        for child in children.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.fixture
def writer(broker: LocalBroker, postgres: LocalPostgres, tmp_path: Path) -> Iterator[Writer]:
    """``city-vitals writer`` running, once its three roles have started."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = stack_env(broker.bootstrap, fresh_database(postgres), prefix)
    with running_writer(env, tmp_path / "writer.log") as running:
        yield running


def test_a_role_that_dies_takes_the_writer_and_the_other_roles_down(writer: Writer) -> None:
    assert set(writer.roles) == {"readings", "alerts", "events"}
    writer.roles["alerts"].send_signal(signal.SIGKILL)
    assert writer.process.wait(30) != 0, "the writer went on without its alerts consumer"
    others = [writer.roles["readings"], writer.roles["events"]]
    _, alive = psutil.wait_procs(others, timeout=30)
    assert not alive, f"roles outlived the writer: {alive}"
    assert "writer alerts exited" in writer.log.read_text()


def test_the_roles_end_when_the_writer_is_killed(writer: Writer) -> None:
    writer.process.kill()
    writer.process.wait(10)
    _, alive = psutil.wait_procs(list(writer.roles.values()), timeout=15)
    assert not alive, f"roles outlived the killed writer: {alive}"


def backend_niceness(db_url: str, role: psutil.Process) -> set[int]:
    """The niceness of the PostgreSQL backends serving a role's connections (matched by client
    port). A backend whose connection closed meanwhile (the readings role's upkeep connection
    comes and goes) is left out."""
    ports = {c.laddr.port for c in role.net_connections(kind="tcp") if c.raddr}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchall()
    found = set()
    for pid, port in rows:
        if port in ports:
            with contextlib.suppress(psutil.NoSuchProcess):
                found.add(psutil.Process(pid).nice())
    return found


def test_on_a_local_database_the_bulk_roles_backends_are_as_nice_as_the_roles(
    broker: LocalBroker, postgres: LocalPostgres, tmp_path: Path
) -> None:
    """The readings and events roles are niced so alerts go first on a busy machine; their
    COPY runs in PostgreSQL backends, which must yield too, while the alerts role's does not."""
    db_url = fresh_database(postgres)
    env = stack_env(
        broker.bootstrap,
        db_url,
        f"t{uuid.uuid4().hex[:8]}",
        CITY_VITALS_WRITER__NICE_DATABASE_BACKENDS="true",
        CITY_VITALS_WRITER__BULK_NICENESS="7",
    )
    with running_writer(env, tmp_path / "writer.log") as writer:
        base = psutil.Process().nice()

        def niceness(name: str) -> set[int]:
            return backend_niceness(db_url, writer.roles[name])

        eventually(lambda: writer.roles["readings"].nice() == base + 7)
        # The readings role also holds the upkeep connection (rollups, retention) at times.
        eventually(lambda: niceness("readings") == niceness("events") == {base + 7})
        assert eventually(lambda: niceness("alerts")) == {postgres_niceness(postgres)}
        assert "cannot renice" not in writer.log.read_text()


def postgres_niceness(postgres: LocalPostgres) -> int:
    """The niceness PostgreSQL's backends start with: the postmaster's."""
    (pid,) = [p.pid for p in psutil.process_iter(["cmdline"]) if is_postmaster(p, postgres)]
    return psutil.Process(pid).nice()


def is_postmaster(process: psutil.Process, postgres: LocalPostgres) -> bool:
    command = process.info["cmdline"] or []
    return bool(command) and command[0].endswith("postgres") and str(postgres.data_dir) in command


def test_readings_are_written_by_as_many_processes_as_asked_each_with_its_partitions(
    broker: LocalBroker, postgres: LocalPostgres, tmp_path: Path
) -> None:
    """``writer.readings_processes``: readings roles in one consumer group, sharing the
    topic's partitions (three here), every reading stored once."""
    db_url = fresh_database(postgres)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = stack_env(broker.bootstrap, db_url, prefix, CITY_VITALS_WRITER__READINGS_PROCESSES="3")
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=3)
    asyncio.run(ensure_topics(kafka))
    topic = kafka.topics.readings
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    process = spawn("writer", env, tmp_path / "writer.log")
    children: list[psutil.Process] = []
    try:

        def all_children() -> list[psutil.Process]:
            found = psutil.Process(process.pid).children()
            return found if len(found) == 5 else []  # three readings, alerts, events

        children = eventually(all_children)
        assert sorted(c.cmdline()[-3] for c in children) == [
            "alerts", "events", "readings", "readings", "readings",
        ]  # fmt: skip

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            try:
                for partition in range(3):
                    for batch in range(4):
                        frame = frame_of(
                            *(
                                SensorReading(
                                    device_id=f"p{partition}-{i}", metric="aqi", value=i,
                                    unit="AQI", ts=t0 + timedelta(seconds=batch),
                                )
                                for i in range(50)
                            )
                        )  # fmt: skip
                        await producer.send_and_wait(topic, frame, partition=partition)
            finally:
                await producer.stop()

        asyncio.run(produce())

        def stored() -> tuple[int, int, int]:
            with psycopg.connect(db_url) as conn:
                rows = conn.execute(
                    "SELECT count(*), count(DISTINCT (reading_id, device_id, metric, ts)) "
                    "FROM readings"
                ).fetchone()
                written = conn.execute(
                    "SELECT count(*) FROM consumer_offsets WHERE topic = %s AND next_offset = 4",
                    [topic],
                ).fetchone()
            assert rows is not None
            assert written is not None
            return rows[0], rows[1], written[0]

        assert eventually(lambda: stored() == (600, 600, 3) and stored(), timeout=60)
    finally:
        process.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
