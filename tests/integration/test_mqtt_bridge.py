"""Devices over MQTT: a real Mosquitto, the bridge as a process, readings onto Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas.deadletter import DeadLetter
from services.config import KafkaSettings
from services.local.broker import LocalBroker
from services.local.mosquitto import LocalMosquitto
from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from tests.integration.conftest import (
    eventually,
    fresh_database,
    read_readings,
    read_topic,
    spawn,
    stack_env,
)

pytestmark = pytest.mark.integration

ROOT = "city-vitals/readings"


@pytest.fixture(scope="module")
def mosquitto(workdir: Path) -> Iterator[LocalMosquitto]:
    server = LocalMosquitto(free_port(), workdir / "mosquitto", workdir / "mosquitto.log")
    server.start()
    yield server
    server.stop()


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gauges-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)


def depth(i: int, **extra: object) -> bytes:
    at = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(seconds=i)
    return orjson.dumps(
        {"metric": "waterlogging_depth", "value": 100.0 + i, "unit": "mm", "ts": at.isoformat(),
         **extra}
    )  # fmt: skip


def test_bridge_forwards_validates_and_keeps_what_arrives_while_it_is_down(
    mosquitto: LocalMosquitto, broker: LocalBroker, postgres: LocalPostgres, workdir: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = stack_env(
        broker.bootstrap,
        fresh_database(postgres),
        prefix,
        CITY_VITALS_MQTT__PORT=str(mosquitto.port),
        CITY_VITALS_MQTT__CLIENT_ID=f"bridge-{prefix}",
    )
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
    log = workdir / f"{prefix}-bridge.log"
    bridge = spawn("mqtt-bridge", env, log)
    gauges = publisher(mosquitto.port)
    try:
        eventually(lambda: "subscribed to" in log.read_text(errors="replace"), timeout=60)
        for i in range(100):
            device = f"yx-wl-{i % 10}"
            publish(gauges, f"{ROOT}/yuexiu/waterlogging_gauge/{device}", depth(i))
        publish(gauges, f"{ROOT}/yuexiu/waterlogging_gauge/yx-wl-1", b"{not json")
        publish(gauges, f"{ROOT}/nowhere", depth(1000))
        publish(gauges, f"{ROOT}/yuexiu/waterlogging_gauge/yx-wl-1", depth(1001, device_id="x"))

        readings = read_readings(kafka, at_least=100)
        assert len(readings) == 100
        first = min(readings, key=lambda r: r["value"])
        # Units normalised (mm -> cm); device and district taken from the topic.
        assert (first["value"], first["unit"]) == (10.0, "cm")
        assert first["device_id"] == "yx-wl-0"
        assert first["location"]["district"] == "yuexiu"

        letters = [
            DeadLetter.model_validate_json(v)
            for v in read_topic(kafka, kafka.topics.dead_letter, at_least=3)
        ]
        assert {letter.source for letter in letters} == {"ingest.mqtt"}
        reasons = " | ".join(letter.reason for letter in letters)
        assert "not valid JSON" in reasons
        assert "does not match" in reasons
        assert "contradicts the topic" in reasons

        # The bridge goes away; the gauges keep publishing; Mosquitto keeps the messages for
        # the bridge's persistent session, and the restarted bridge forwards every one.
        bridge.terminate()
        bridge.wait(30)
        for i in range(100, 150):
            publish(gauges, f"{ROOT}/tianhe/waterlogging_gauge/th-wl-{i % 5}", depth(i))
        bridge = spawn("mqtt-bridge", env, log)
        readings = read_readings(kafka, at_least=150)
        assert len({(r["device_id"], r["ts"]) for r in readings}) == 150
        assert sum(r["location"]["district"] == "tianhe" for r in readings) == 50
    finally:
        gauges.loop_stop()
        gauges.disconnect()
        bridge.terminate()
        bridge.wait(30)
