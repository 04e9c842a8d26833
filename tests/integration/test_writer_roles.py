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


@pytest.fixture
def writer(broker: LocalBroker, postgres: LocalPostgres, tmp_path: Path) -> Iterator[Writer]:
    """``city-vitals writer`` running, once its three roles have started."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = stack_env(broker.bootstrap, fresh_database(postgres), prefix)
    log = tmp_path / "writer.log"
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
