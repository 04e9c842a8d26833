"""Work directories for bench and drill runs."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

KEEP = "CITY_VITALS_BENCH_KEEP"


def scratch(name: str) -> Path:
    """A fresh directory under /tmp for one run. When the run ends, what it holds besides
    files and ``logs/`` (PostgreSQL's data, the broker's, state stores) is deleted: a run at
    tens of thousands of readings/s leaves gigabytes, and repeated runs filled this machine's
    disk. Set ``CITY_VITALS_BENCH_KEEP=1`` to keep everything."""
    work = Path(tempfile.mkdtemp(prefix=f"city-vitals-{name}-", dir="/tmp"))
    work.chmod(0o755)  # as root, PostgreSQL runs as 'nobody' and must reach its data
    if not os.environ.get(KEEP):
        atexit.register(_prune, work)
    # A run stopped with SIGTERM (kill, pkill, timeout) unwinds as on Ctrl-C: its finally
    # blocks stop what it started. Without this, a killed bench.storage left its PostgreSQL
    # running a rollup query (22 GB resident, a core busy) for half an hour.
    signal.signal(signal.SIGTERM, _terminated)
    return work


def _terminated(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _prune(work: Path) -> None:
    for path in work.iterdir():
        if path.is_dir() and path.name != "logs":
            shutil.rmtree(path, ignore_errors=True)
    print(f"logs of this run: {work} ({KEEP}=1 keeps its data too)", file=sys.stderr)
