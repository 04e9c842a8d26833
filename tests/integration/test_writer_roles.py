"""The writer's roles run as child processes of ``city-vitals writer``: the three live and die
together, so a supervisor that restarts the writer restarts them all."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest

from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from tests.integration.conftest import eventually, fresh_database, spawn, stack_env


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
