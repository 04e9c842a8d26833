"""bench.e2e's CPU accounting: a part of the stack is counted with its children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.e2e import cpu_line, tree_cpu

# A parent that idles while its child burns about 0.3 s of CPU, then both linger.
FAMILY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass\\n"
    "time.sleep(30)"])
time.sleep(30)
"""


def test_a_process_is_counted_with_its_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", FAMILY], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while tree_cpu(parent.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        used = tree_cpu(parent.pid)
        # The child's burn: the parent alone (an idle interpreter) uses a fraction of it.
        assert 0.3 <= used < 3.0
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too
        parent.wait()
    assert tree_cpu(parent.pid) == 0.0  # gone: nothing to count, no error


def test_the_cpu_line_gives_microseconds_per_reading_busiest_first() -> None:
    line = cpu_line({"rules": 1.5, "ingest": 3.0, "api": 0.0}, readings=100_000, seconds=10)
    assert "ingest 30.0, rules 15.0, api 0.0; all 45.0 (45% of a core)" in line
