"""Work directories for bench and drill runs."""

from __future__ import annotations

import atexit
import os
import shutil
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
    return work


def _prune(work: Path) -> None:
    for path in work.iterdir():
        if path.is_dir() and path.name != "logs":
            shutil.rmtree(path, ignore_errors=True)
    print(f"logs of this run: {work} ({KEEP}=1 keeps its data too)", file=sys.stderr)
