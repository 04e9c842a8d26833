"""Ingest figures: readings/s accepted over HTTP into Kafka, over MQTT into Kafka, and Open311
POSTs/s, each beside a reference measured in the same run, plus the simulator's own rate.

    python -m bench.ingest [--readings 1000000] [--mqtt 20000] [--tickets 2000] [--clients 4]

It starts its own broker, PostgreSQL and Mosquitto in a temporary directory, then ingest and
the MQTT bridge as processes (device registry on, the simulated city's devices registered).
References: a bare uvicorn endpoint parsing the same bodies (HTTP, Open311), and a bare MQTT
subscriber that only counts what Mosquitto delivers (MQTT).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import orjson
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from bench.kafkalog import ReadingCounts, end_offsets
from bench.scratch import scratch
from ingest.city.model import City
from ingest.city.tickets import draw_calls
from services.config import DatabaseSettings, KafkaSettings
from services.db import migrate
from services.kafka import ensure_topics
from services.local.broker import LocalBroker
from services.local.mosquitto import LocalMosquitto
from services.local.postgres import LocalPostgres
from services.local.processes import free_port, stop_process, wait_for_port
from services.local.stack import register_simulated_devices


def post_rate(
    url: str, bodies: list[bytes], *, key: str, clients: int, form: bool = False
) -> float:
    """Items/s accepted by ``url`` with ``clients`` requests in flight."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if not form:
        headers["content-type"] = "application/json"
    else:
        headers["content-type"] = "application/x-www-form-urlencoded"

    async def go() -> float:
        queue = list(reversed(bodies))
        accepted = 0

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal accepted
            while queue:
                body = queue.pop()
                response = await client.post(url, content=body, headers=headers)
                if response.status_code not in (201, 202):
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
                accepted += 1 if form else int(response.json().get("accepted", 0))

        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            began = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(clients)))
            return accepted / (time.perf_counter() - began)

    return asyncio.run(go())


def on_topic(kafka: KafkaSettings, counts: ReadingCounts) -> int:
    """Readings in the frames on the readings topic."""
    ends = asyncio.run(end_offsets(kafka, [kafka.topics.readings]))
    return sum(counts.upto(p, end) for (_, p), end in ends.items())


def mqtt_messages(city: City, count: int) -> list[tuple[str, bytes]]:

    items = orjson.loads(city.body(time.time(), count))
    by_id = {d.device_id: d for d in city.devices}
    out = []
    for item in items:
        d = by_id[item["device_id"]]
        topic = f"city-vitals/readings/{d.grid.street.district}/{d.device_type}/{d.device_id}"
        out.append((topic, orjson.dumps(item)))
    return out


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.loop_stop()
    client.disconnect()


def bare_mqtt_rate(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Messages/s a subscriber that only counts receives (the MQTT reference)."""
    received = 0
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received >= len(messages):
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{time.time_ns()}")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("bare/#", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    began = time.perf_counter()
    publish_all(port, [("bare/" + t, p) for t, p in messages])
    done.wait(120)
    rate = received / (time.perf_counter() - began)
    sub.loop_stop()
    sub.disconnect()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--mqtt", type=int, default=20_000, help="MQTT messages, one reading each")
    parser.add_argument("--tickets", type=int, default=2_000, help="Open311 POSTs")
    parser.add_argument("--clients", type=int, default=4, help="HTTP requests in flight")
    args = parser.parse_args()

    work = scratch("bench")
    city = City(seed=1)

    began = time.perf_counter()
    generated = 0
    while time.perf_counter() - began < 2.0:
        generated += city.body(time.time(), 10_000).count(b'"device_id"')
    rate = generated / (time.perf_counter() - began)
    print(f"simulator generation:            {rate:>12,.0f} readings/s")

    bodies = [city.body(time.time(), args.batch) for _ in range(args.readings // args.batch)]
    calls = draw_calls(np.random.default_rng(1), 10**6, city.grids, {})[: args.tickets]
    forms = [str(httpx.QueryParams(form)).encode() for form in calls]

    pg = LocalPostgres(work / "pg", free_port(), work / "postgres.log")
    broker = LocalBroker(free_port(), work / "broker.log")
    mosquitto = LocalMosquitto(free_port(), work / "mosquitto", work / "mosquitto.log")
    pg.init()
    pg.start()
    broker.start()
    mosquitto.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db = pg.create_database("city_vitals")
        migrate(DatabaseSettings(url=SecretStr(db)))
        register_simulated_devices(db, seed=1)
        from services.auth.models import ApiKeyCreate, Scope
        from services.auth.service import issue_sync

        key = issue_sync(
            db,
            request=ApiKeyCreate(name="bench", scopes=[Scope.READINGS_WRITE, Scope.TICKETS_WRITE]),
            by="bench",
        ).key
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench")
        asyncio.run(ensure_topics(kafka))
        ingest_port, bare_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
        env.update(
            CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
            CITY_VITALS_KAFKA__TOPIC_PREFIX="bench",
            CITY_VITALS_DB__URL=db,
            CITY_VITALS_INGEST__PORT=str(ingest_port),
            CITY_VITALS_MQTT__PORT=str(mosquitto.port),
            CITY_VITALS_MQTT__CLIENT_ID="bench-bridge",
        )

        def start(*command: str, log: str) -> None:
            with (work / log).open("ab") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", *command], env=env, stdout=out,
                    stderr=subprocess.STDOUT,
                ))  # fmt: skip

        start("services.cli", "ingest", log="ingest.log")
        start("services.cli", "mqtt-bridge", log="bridge.log")
        start("uvicorn", "bench.bare:app", "--port", str(bare_port), "--log-level", "warning",
              log="bare.log")  # fmt: skip
        wait_for_port("127.0.0.1", ingest_port, timeout=60, what="ingest", log=work / "ingest.log")
        wait_for_port("127.0.0.1", bare_port, timeout=60, what="bare endpoint")
        ingest, bare = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{bare_port}"
        post_rate(f"{ingest}/api/v1/readings", bodies[:2], key=key, clients=1)  # warm up

        print(
            f"HTTP: {args.readings:,} readings in batches of {args.batch:,}, {args.clients} clients"
        )
        ours = post_rate(f"{ingest}/api/v1/readings", bodies, key=key, clients=args.clients)
        ref = post_rate(f"{bare}/api/v1/readings", bodies, key="", clients=args.clients)
        print(f"  ingest over HTTP into Kafka     {ours:>12,.0f} readings/s")
        print(
            f"  bare uvicorn endpoint           {ref:>12,.0f} readings/s   ratio {ours / ref:.2f}"
        )

        print(f"Open311: {len(forms):,} form POSTs, {args.clients} clients")
        ours = post_rate(
            f"{ingest}/open311/v2/requests.json",
            [f + b"&api_key=" + key.encode() for f in forms],
            key="",
            clients=args.clients,
            form=True,
        )
        ref = post_rate(
            f"{bare}/open311/v2/requests.json", forms, key="", clients=args.clients, form=True
        )
        print(f"  Open311 into Kafka              {ours:>12,.0f} POSTs/s")
        print(
            f"  bare uvicorn endpoint           {ref:>12,.0f} POSTs/s      ratio {ours / ref:.2f}"
        )

        messages = mqtt_messages(city, args.mqtt)
        print(f"MQTT: {len(messages):,} QoS 1 messages, one reading each")
        wait_for = work / "bridge.log"
        deadline = time.monotonic() + 60
        while b"subscribed to" not in wait_for.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.2)
        counts = ReadingCounts(kafka)
        before = on_topic(kafka, counts)
        began = time.perf_counter()
        publish_all(mosquitto.port, messages)
        while on_topic(kafka, counts) < before + len(messages):
            if time.perf_counter() - began > 300:
                raise TimeoutError("the bridge did not forward every message in 5 minutes")
            time.sleep(0.1)
        ours = len(messages) / (time.perf_counter() - began)
        counts.close()
        ref = bare_mqtt_rate(mosquitto.port, messages)
        print(f"  MQTT bridge into Kafka          {ours:>12,.0f} readings/s")
        print(
            f"  bare MQTT subscriber            {ref:>12,.0f} messages/s   ratio {ours / ref:.2f}"
        )
    finally:
        for proc in procs:
            stop_process(proc, timeout=15)
        mosquitto.stop()
        broker.stop()
        pg.stop()


if __name__ == "__main__":
    main()
