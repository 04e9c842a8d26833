"""The whole platform on one machine: broker, PostgreSQL, services and a simulated feed.

Each service runs as its own process, exactly as in production, with its settings passed
through the environment. A service that dies is restarted with backoff; Ctrl-C stops
everything in reverse order.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psycopg
from pydantic import SecretStr

from services.config import Settings, to_env
from services.db import migrate
from services.local.broker import LocalBroker
from services.local.mosquitto import LocalMosquitto
from services.local.postgres import LocalPostgres
from services.local.processes import stop_process, wait_for_port

log = logging.getLogger(__name__)

MAX_RESTARTS = 5


def default_data_dir() -> Path:
    """Where local state lives when no data directory is configured.

    As root, a system path: PostgreSQL then runs as ``nobody``, which cannot enter /root.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/city-vitals")
    return Path.home() / ".local" / "share" / "city-vitals"


def redact(url: str) -> str:
    """A database URL fit to print: the password replaced."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def forget_offsets_of_previous_broker(db_url: str) -> None:
    """The local broker starts with empty topics, so offsets stored against the previous
    broker's topics point at records that no longer exist; resuming from them would skip
    new ones. The rules engine keeps its snapshots (open alerts, windows) and reads the new
    topics from their start. Apache Kafka keeps its topics, and nothing of this runs in
    production."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        forgotten = conn.execute("DELETE FROM consumer_offsets").rowcount
        forgotten += conn.execute("UPDATE rules_state SET next_offset = 0").rowcount
    if forgotten:
        log.info("local broker starts empty: forgot %d stored partition offsets", forgotten)


LOCAL_KEY_NAME = "local gateway (city-vitals local)"


def issue_local_key(db_url: str, data_dir: Path) -> str:
    """A gateway key for the simulated city and for trying ingest by hand, issued anew at
    every start (the previous one is revoked) and kept in DATA_DIR/gateway.key (mode 0600)."""
    from services.auth.models import ApiKeyCreate, Scope
    from services.auth.service import issue_sync

    issued = issue_sync(
        db_url,
        request=ApiKeyCreate(
            name=LOCAL_KEY_NAME, scopes=[Scope.READINGS_WRITE, Scope.TICKETS_WRITE]
        ),
        by="local-stack",
        replace=True,
    )
    path = data_dir / "gateway.key"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(issued.key + "\n", encoding="utf-8")
    return issued.key


def register_simulated_devices(db_url: str, seed: int = 12345) -> None:
    """Put the simulated city's devices in the registry, so ingest accepts their readings."""
    import asyncio

    from ingest.city.model import City
    from services.devices.models import DeviceUpsert
    from services.devices.service import upsert_many

    devices = [
        DeviceUpsert(
            device_id=d.device_id,
            device_type=d.device_type,
            lon=d.grid.lon,
            lat=d.grid.lat,
            grid=d.grid.code,
            street=d.grid.street.code,
            district=d.grid.street.district,
        )
        for d in City(seed).devices
    ]

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await upsert_many(conn, devices=devices, by="local-stack")

    log.info("registered %d simulated devices", asyncio.run(run()))


def stack_settings(settings: Settings) -> Settings:
    """The settings the local stack runs with: topics on its embedded broker get
    ``local.broker_partitions``, unless the partitions were set."""
    local = settings.local
    if not local.embedded_broker or "partitions" in settings.kafka.model_fields_set:
        return settings
    kafka = settings.kafka.model_copy(update={"partitions": local.broker_partitions})
    return settings.model_copy(update={"kafka": kafka})


@dataclass
class Service:
    """One supervised platform process."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def stop(self, timeout: float = 15.0) -> None:
        if stop_process(self.process, timeout=timeout):
            log.warning("%s did not stop in %.0fs; killed it", self.name, timeout)


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


class LocalStack:
    """Starts, watches and stops the local platform."""

    def __init__(
        self, settings: Settings, *, data_dir: Path, simulate: bool, city_devices: bool = False
    ) -> None:
        self.settings = settings = stack_settings(settings)
        local = settings.local
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.simulate = simulate
        # The simulated city's devices registered before ingest starts: a benchmark that runs
        # the simulator itself needs them known from its first post.
        self.city_devices = simulate or city_devices
        self.broker = (
            LocalBroker(local.broker_port, self.logs / "broker.log")
            if local.embedded_broker
            else None
        )
        self.postgres = (
            LocalPostgres(data_dir / "postgres", local.postgres_port, self.logs / "postgres.log")
            if local.embedded_postgres
            else None
        )
        self.mosquitto = (
            LocalMosquitto(local.mqtt_port, data_dir / "mosquitto", self.logs / "mosquitto.log")
            if local.embedded_mqtt
            else None
        )
        self.services: list[Service] = []
        self.gateway_key = ""

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap if self.broker else self.settings.kafka.bootstrap_servers

    def start(self) -> tuple[dict[str, str], str]:
        """Start everything; returns the services' environment and the database URL."""
        started = time.monotonic()
        if self.broker:
            self.broker.start()
        if self.mosquitto:
            self.mosquitto.start()
        if self.postgres:
            self.postgres.start()
            db_url = self.postgres.create_database("city_vitals")
        else:
            db_url = self.settings.db.url.get_secret_value()
        migrate(self.settings.db.model_copy(update={"url": SecretStr(db_url)}))
        if self.broker:
            forget_offsets_of_previous_broker(db_url)

        self.gateway_key = issue_local_key(db_url, self.data_dir)
        if self.city_devices:
            register_simulated_devices(db_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
        env.update(to_env(self.settings))
        env["CITY_VITALS_LOCAL__GATEWAY_KEY"] = self.gateway_key
        env["CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS"] = self.bootstrap
        env["CITY_VITALS_DB__URL"] = db_url
        if self.postgres:  # on this host: the writer's bulk roles may renice their backends
            env["CITY_VITALS_WRITER__NICE_DATABASE_BACKENDS"] = "true"
        env["PYTHONUNBUFFERED"] = "1"
        if self.mosquitto:
            env["CITY_VITALS_MQTT__HOST"] = "127.0.0.1"
            env["CITY_VITALS_MQTT__PORT"] = str(self.mosquitto.port)
        names = ["ingest", "rules", "writer", "api", "mqtt-bridge"]
        if self.simulate:
            names.append("simulate")
        args = {"simulate": ["simulate", "--control", str(self.data_dir / "scenario.json")]}
        self.services = [Service(n, args.get(n, [n]), self.logs / f"{n}.log") for n in names]
        for service in self.services:
            service.start(env)
        api, ingest = self.settings.api, self.settings.ingest
        wait_for_port(api.host, api.port, timeout=60, what="the API", log=self.logs / "api.log")
        wait_for_port(
            ingest.host, ingest.port, timeout=60, what="ingest", log=self.logs / "ingest.log"
        )
        log.info("local stack up in %.1fs", time.monotonic() - started)
        return env, db_url

    def watch(self, env: dict[str, str]) -> None:
        """Restart services that die, with backoff; give up on one that keeps dying."""
        while True:
            for service in self.services:
                assert service.process is not None
                code = service.process.poll()
                if code is None:
                    continue
                now = time.monotonic()
                service.restarts = [t for t in service.restarts if now - t < 60] + [now]
                if len(service.restarts) > MAX_RESTARTS:
                    raise RuntimeError(
                        f"{service.name} exited {MAX_RESTARTS} times within a minute "
                        f"(last exit code {code}); see {service.log_path}"
                    )
                delay = 2 ** (len(service.restarts) - 1)
                log.warning(
                    "%s exited with code %s; restarting in %ds (log: %s)",
                    service.name,
                    code,
                    delay,
                    service.log_path,
                )
                time.sleep(delay)
                service.start(env)
            time.sleep(0.5)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        if self.postgres:
            self.postgres.stop()
        if self.mosquitto:
            self.mosquitto.stop()
        if self.broker:
            self.broker.stop()


def run(settings: Settings, *, data_dir: Path | None, fresh: bool, simulate: bool) -> int:
    """Run the local stack in the foreground until Ctrl-C or SIGTERM."""
    data_dir = (data_dir or settings.local.data_dir or default_data_dir()).resolve()
    if fresh and data_dir.exists():
        log.info("--fresh: removing %s", data_dir)
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(settings, data_dir=data_dir, simulate=simulate)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        env, db_url = stack.start()
        api, ingest = settings.api, settings.ingest
        print(
            "\ncity-vitals is running on this machine:\n"
            f"  API            http://{api.host}:{api.port}/docs\n"
            f"  alerts         http://{api.host}:{api.port}/api/v1/alerts?status=firing\n"
            f"  ingest         http://{ingest.host}:{ingest.port}/api/v1/readings  (POST)\n"
            f"  ingest key     {stack.data_dir / 'gateway.key'}  (readings:write, tickets:write)\n"
            f"  12345 Open311  http://{ingest.host}:{ingest.port}/open311/v2/services.json\n"
            "  scenarios      city-vitals scenario list | start typhoon | stop\n"
            f"  MQTT           {settings.mqtt.topic_root}/<district>/<type>/<device> on "
            f"127.0.0.1:{stack.mosquitto.port if stack.mosquitto else settings.mqtt.port}\n"
            f"  Kafka          {stack.bootstrap}{'' if stack.broker else ' (external)'}\n"
            f"  PostgreSQL     {redact(db_url)}{'' if stack.postgres else ' (external)'}\n"
            f"  logs           {stack.logs}\n"
            f"  simulated feed {'on' if simulate else 'off'}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        stack.watch(env)
    except _Interrupted:
        log.info("stopping the local stack")
    except Exception:
        log.exception("the local stack failed")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("city-vitals stopped.", flush=True)
    return 0
