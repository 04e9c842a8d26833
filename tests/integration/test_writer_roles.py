"""The writer's roles run as child processes of ``city-vitals writer``: the three live and die
together, so a supervisor that restarts the writer restarts them all."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import psutil

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


def start_writer(
    broker: LocalBroker, postgres: LocalPostgres, log: Path
) -> subprocess.Popen[bytes]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = stack_env(broker.bootstrap, fresh_database(postgres), prefix)
    return spawn("writer", env, log)


def test_a_role_that_dies_takes_the_writer_and_the_other_roles_down(
    broker: LocalBroker, postgres: LocalPostgres, tmp_path: Path
) -> None:
    writer = start_writer(broker, postgres, tmp_path / "writer.log")
    try:
        children = eventually(lambda: all_roles(writer))
        assert set(children) == {"readings", "alerts", "events"}
        children["alerts"].send_signal(signal.SIGKILL)
        assert writer.wait(30) != 0, "the writer went on without its alerts consumer"
        _, alive = psutil.wait_procs([children["readings"], children["events"]], timeout=30)
        assert not alive, f"roles outlived the writer: {alive}"
        assert "writer alerts exited" in (tmp_path / "writer.log").read_text()
    finally:
        writer.kill()


def test_the_roles_end_when_the_writer_is_killed(
    broker: LocalBroker, postgres: LocalPostgres, tmp_path: Path
) -> None:
    writer = start_writer(broker, postgres, tmp_path / "writer.log")
    try:
        children = eventually(lambda: all_roles(writer))
        writer.kill()
        writer.wait(10)
        _, alive = psutil.wait_procs(list(children.values()), timeout=15)
        assert not alive, f"roles outlived the killed writer: {alive}"
    finally:
        writer.kill()
