"""Small helpers for the local stack's child processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(
    host: str, port: int, *, timeout: float, what: str, log: Path | None = None
) -> None:
    """Wait until host:port accepts connections, or fail saying where to look."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.1)
    hint = f"; see {log}" if log else ""
    raise TimeoutError(f"{what} did not open {host}:{port} within {timeout:.0f}s{hint}")


def free_port() -> int:
    """A TCP port nothing listens on right now (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(
    process: subprocess.Popen[bytes] | None, *, timeout: float, sig: int = signal.SIGTERM
) -> bool:
    """Ask a child to stop with ``sig``, kill it after ``timeout``; says whether it had to."""
    if process is None or process.poll() is not None:
        return False
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True
    return False
