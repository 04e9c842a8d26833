"""A local MQTT broker: Debian's Mosquitto, started with a configuration of our own.

``make`` installs the ``mosquitto`` package when it is missing. Mosquitto keeps its queues in
memory here: QoS 1 messages for the bridge's persistent session wait while the bridge is down,
and are lost only if Mosquitto itself stops.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import subprocess
from pathlib import Path

from services.local.processes import port_open, stop_process, wait_for_port

log = logging.getLogger(__name__)


def mosquitto_binary() -> Path:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin), or a clear error."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            "the local MQTT broker needs Mosquitto: run 'make' (it installs the Debian package "
            "'mosquitto' when missing) or 'apt-get install mosquitto'"
        )
    return Path(found)


class LocalMosquitto:
    """A Mosquitto process listening on 127.0.0.1:port, anonymous access, loopback only."""

    def __init__(self, port: int, workdir: Path, log_path: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(
                f"port {self.port} is already in use; stop what holds it or set "
                "CITY_VITALS_LOCAL__MQTT_PORT"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"user {getpass.getuser()}\n"
            # The bridge acknowledges only after Kafka has: let many messages be in flight,
            # and queue plenty for a bridge that is briefly away.
            "max_inflight_messages 2000\n"
            "max_queued_messages 200000\n"
            "log_dest stdout\n",
            encoding="utf-8",
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [str(mosquitto_binary()), "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, timeout=timeout, what="Mosquitto", log=self.log_path)
        log.info("MQTT broker listening on 127.0.0.1:%d", self.port)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout=timeout)
