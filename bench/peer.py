"""Our rules engine beside a peer stream processor, Quix Streams, on the same records through
the same broker on the same machine, in the same run.

    python -m bench.peer [--readings 600000] [--devices 1000] [--rounds 3]

The records: waterlogging depths from ``--devices`` gauges, one every 10 s of event time each,
rising and falling through the thresholds, on a 3-partition topic, as ingest puts them there:
a gateway posts every gauge's reading of each 10 s, and each partition gets one frame of the
post's readings of its devices (``schemas.readings.ReadingFrame``). Quix windows by message
key, so it unpacks a frame into readings, stamps each with its own time and re-keys them by
device (``group_by``, a repartition topic: what a frame of many devices costs a processor
keyed by message). The work,
the same threshold indicator in both: per device, tumbling 60 s event-time windows (time from
the reading's ``ts``) with 30 s allowed lateness, the window's maximum, its warning level
(blue 10, yellow 20, orange 30, red 50 cm), and a record out each time a device's level
changes. Ours (a ``city-vitals rules`` process, the whole default catalogue loaded) also applies
hysteresis and staleness, emits every window's value, and saves its state with its offsets in
PostgreSQL every second; Quix keeps its window and level state in RocksDB with changelog
topics, as it does by default. Each is timed from its first processed record to its last (ours
by the offsets it commits to the broker after each batch), in turn, ``--rounds`` times; the
median counts.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from bench.kafkalog import produced_at
from bench.scratch import scratch
from ingest.batch import Accepted, frames
from schemas.readings import LocationRecord, micros
from services.config import DatabaseSettings, KafkaSettings
from services.db import migrate
from services.kafka import ensure_topics, make_producer
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port, stop_process

THRESHOLDS = (10.0, 20.0, 30.0, 50.0)
PARTITIONS = 3


def records(count: int, devices: int) -> list[tuple[int, bytes]]:
    """(partition, frame) records: each 10 s post's readings, a frame a partition."""
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    out = []
    for start in range(0, count, devices):
        post: dict[int, list[Accepted]] = {}
        for i in range(start, min(start + devices, count)):
            device, step = i % devices, i // devices
            at = t0 + timedelta(seconds=10 * step, milliseconds=device)
            depth = max(0.0, 30 + 30 * math.sin(step / 20 + device))
            name = f"wl-{device:05d}"
            where: LocationRecord = {"district": f"d{device % 11}", "street": f"s{device % 170}"}
            reading = Accepted(
                i, name, "waterlogging_depth", "cm", micros(at), round(depth, 2), where, None, i
            )
            post.setdefault(device % PARTITIONS, []).append(reading)
        out += [(p, frame) for p, readings in post.items() for frame in frames(readings)]
    return out


async def fill(kafka: KafkaSettings, data: list[tuple[int, bytes]]) -> None:
    # Quix derives its changelog topics' settings from the source topic's retention, which
    # the broker only reports when it was set: create the readings topic with it.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        retention = {"retention.ms": "-1", "retention.bytes": "-1"}
        await admin.create_topics(
            [NewTopic(kafka.topics.readings, PARTITIONS, 1, topic_configs=retention)]
        )
    finally:
        await admin.close()
    await ensure_topics(kafka)
    producer = make_producer(kafka)
    await producer.start()
    try:
        sends = [await producer.send(kafka.topics.readings, v, partition=p) for p, v in data]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def progress(
    kafka: KafkaSettings, group: str, topic: str, total: int, proc: subprocess.Popen[bytes]
) -> float:
    """Seconds ``group`` took from its first committed offsets on ``topic`` to committing all
    ``total`` records, polled every 20 ms, scaled up to cover the records before its first
    commit. The engine commits to the broker after every batch (its own offsets, with its
    state, go to PostgreSQL once a second: too coarse to time a run of seconds by)."""
    # A consumer in the group that never joins it: it only asks the coordinator.
    watcher = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await watcher.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        first: tuple[float, int] | None = None
        while True:
            done = sum([(await watcher.committed(tp)) or 0 for tp in tps])
            now = time.perf_counter()
            if first is None and done:
                first = (now, done)
            if done >= total:
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the engine exited ({proc.returncode}) at {done:,} of {total:,}"
                )
            await asyncio.sleep(0.02)
    finally:
        await watcher.stop()
    assert first is not None
    if first[1] >= total:
        raise RuntimeError("everything was committed at once: use more --readings")
    return (now - first[0]) * total / (total - first[1])


def ours(
    kafka: KafkaSettings, db_url: str, total: int, logs: Path, group: str
) -> tuple[float, int]:
    """Seconds our engine took for the ``total`` records, and the transitions it emitted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
    env.update(
        CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        CITY_VITALS_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
        CITY_VITALS_DB__URL=db_url,
        CITY_VITALS_RULES__CONSUMER_GROUP=group,
        CITY_VITALS_RULES__TICK_SECONDS="3600",
    )
    with (logs / "rules.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "rules"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        elapsed = asyncio.run(progress(kafka, group, kafka.topics.readings, total, proc))
    finally:
        stop_process(proc, timeout=30)
    # Distinct: a member that replays from its last snapshot (after a rebalance) re-sends
    # identical records, which downstream stores once.
    return elapsed, len(asyncio.run(produced_at(kafka, kafka.topics.alerts)))


def quix(kafka: KafkaSettings, total: int, state_dir: Path, group: str) -> tuple[float, int]:
    """Seconds from Quix's first processed record to its last reading, and the level changes
    it emitted."""
    from quixstreams import Application
    from quixstreams.dataframe.windows import Max

    def readings(frame: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"device_id": d, "ts": us // 1000, "value": v}
            for d, us, v in zip(frame["device_id"], frame["ts"], frame["value"], strict=True)
        ]

    marks: dict[str, float] = {}
    processed = 0  # readings off the repartition topic
    changes = 0

    def on_processed(topic: str, partition: int, offset: int) -> None:
        nonlocal processed
        now = time.perf_counter()
        marks.setdefault("first", now)
        if topic == kafka.topics.readings:
            return
        processed += 1
        if processed >= total:
            marks["last"] = now
            app.stop()

    def level(window: dict[str, Any], state: Any) -> dict[str, Any] | None:
        nonlocal changes
        rank = sum(1 for t in THRESHOLDS if window["value"] >= t)
        if rank == state.get("rank", 0):
            return None
        state.set("rank", rank)
        changes += 1
        return {"start": window["start"], "rank": rank}

    app = Application(
        broker_address=kafka.bootstrap_servers,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=str(state_dir),
        on_message_processed=on_processed,
        loglevel="WARNING",
    )
    source = app.topic(kafka.topics.readings, value_deserializer="json")
    sink = app.topic("bench-quix-alerts", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(readings, expand=True)
    sdf = sdf.set_timestamp(lambda reading, key, timestamp, headers: reading["ts"])
    sdf = sdf.group_by("device_id")
    sdf = sdf.apply(lambda reading: reading["value"])
    sdf = sdf.tumbling_window(timedelta(seconds=60), grace_ms=30_000).agg(value=Max()).final()
    sdf = sdf.apply(level, stateful=True).filter(lambda change: change is not None)
    sdf.to_topic(sink)
    watchdog = threading.Timer(900, app.stop)
    watchdog.start()
    try:
        app.run()
    finally:
        watchdog.cancel()
    if "last" not in marks:
        raise RuntimeError(f"Quix processed {processed:,} of {total:,} readings")
    return marks["last"] - marks["first"], changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # With zstd batches a 4 MB fetch holds ~16x the readings it did: at 600,000 the engine took
    # them all in its first batch, and there was no progress to time.
    parser.add_argument("--readings", type=int, default=2_400_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3, help="each runs both, in turn")
    args = parser.parse_args()
    work = scratch("peer")
    pg = LocalPostgres(work / "pg", free_port(), work / "postgres.log")
    broker = LocalBroker(free_port(), work / "broker.log")
    pg.init()
    pg.start()
    broker.start()
    try:
        db_url = pg.create_database("peer")
        migrate(DatabaseSettings(url=SecretStr(db_url)))
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap, topic_prefix="peer", partitions=PARTITIONS
        )
        data = records(args.readings, args.devices)
        asyncio.run(fill(kafka, data))
        print(
            f"{args.readings:,} readings from {args.devices:,} gauges on {PARTITIONS} "
            f"partitions, in {len(data):,} frames"
        )
        ratios: list[float] = []
        rates: dict[str, list[float]] = {"ours": [], "quix": []}
        for n in range(1, args.rounds + 1):
            took, emitted = ours(kafka, db_url, len(data), work, f"bench-rules-{n}")
            rates["ours"].append(args.readings / took)
            print(f"  round {n}  city-vitals rules  {rates['ours'][-1]:>8,.0f} readings/s   "
                  f"{emitted:,} transitions")  # fmt: skip
            took, changes = quix(kafka, args.readings, work / f"quix-{n}", f"bench-quix-{n}")
            rates["quix"].append(args.readings / took)
            ratios.append(rates["ours"][-1] / rates["quix"][-1])
            print(f"  round {n}  Quix Streams       {rates['quix'][-1]:>8,.0f} readings/s   "
                  f"{changes:,} level changes   ratio {ratios[-1]:.2f}x")  # fmt: skip
        print(
            f"median of {args.rounds}: ours {statistics.median(rates['ours']):,.0f}, Quix "
            f"{statistics.median(rates['quix']):,.0f} readings/s; ratio ours / Quix "
            f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
        )
    finally:
        broker.stop()
        pg.stop()


if __name__ == "__main__":
    main()
