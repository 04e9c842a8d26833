"""Reading the platform's topics whole, for drills and tests that check the rules engine
against a replay of its own input: partition logs, end offsets, ticks, saved offsets, and the
pure engine's verdict over the logs."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime

import numpy as np
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from rules.engine import Definitions, decode_tick, encode_tick, replay
from rules.indicators import Catalogue, Source
from schemas.alerts import AlertTransition
from schemas.indicator_values import IndicatorValue
from services.config import KafkaSettings
from services.kafka import TICK_HEADER, is_tick

Logs = dict[int, list[tuple[bytes, bool]]]


async def tick_all(kafka: KafkaSettings, at: datetime) -> None:
    """A tick into every partition of the source topics: event time moves on everywhere and
    every window before ``at`` (less its lateness) closes."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for topic in (kafka.topics.readings, kafka.topics.tickets):
            for p in sorted(await producer.partitions_for(topic)):
                await producer.send_and_wait(
                    topic,
                    encode_tick(int(at.timestamp() * 1000)),
                    partition=p,
                    headers=[(TICK_HEADER, b"1")],
                )
    finally:
        await producer.stop()


async def read_log(kafka: KafkaSettings, topic: str) -> Logs:
    """Every record of every partition of a topic, in offset order, ticks marked."""
    return {
        p: [(r.value or b"", is_tick(r)) for r in records]
        for p, records in (await read_records(kafka, topic)).items()
    }


async def produced_at(kafka: KafkaSettings, topic: str) -> dict[str, float]:
    """When each record on ``topic`` was produced (its timestamp, epoch seconds), by the
    ``transition_id`` or ``value_id`` it carries."""
    out = {}
    for records in (await read_records(kafka, topic)).values():
        for r in records:
            body = orjson.loads(r.value or b"{}")
            out[str(body.get("transition_id") or body.get("value_id"))] = r.timestamp / 1000
    return out


async def arrivals(kafka: KafkaSettings, topic: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per partition of a source topic: the highest event time so far (epoch ms) after each
    record, ticks included (the engine's view of time there), and the record's timestamp
    (when it was produced, epoch s). ``searchsorted`` on the first finds the record that moved the
    partition's time past a moment."""
    out = {}
    for p, records in (await read_records(kafka, topic)).items():
        seen = np.empty(len(records), dtype=np.int64)
        top = np.iinfo(np.int64).min
        for i, r in enumerate(records):
            raw = r.value or b"{}"
            # A frame counts as its latest reading, as the engine stamps it.
            ts = decode_tick(raw) if is_tick(r) else max(orjson.loads(raw)["ts"]) // 1000
            top = max(top, ts)
            seen[i] = top
        out[p] = (seen, np.array([r.timestamp / 1000 for r in records], dtype=np.float64))
    return out


async def read_records(
    kafka: KafkaSettings, topic: str
) -> dict[int, list[ConsumerRecord[bytes, bytes]]]:
    """Every record of every partition of a topic, in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer.topics()  # metadata for the topic
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        logs: dict[int, list[ConsumerRecord[bytes, bytes]]] = {tp.partition: [] for tp in tps}
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                logs[tp.partition] += records
        return logs
    finally:
        await consumer.stop()


async def end_offsets(kafka: KafkaSettings, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))
        ]
        return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def saved_offsets(
    db_url: str, group: str, table: str = "rules_state"
) -> dict[tuple[str, int], int]:
    """Offsets a consumer group keeps with its effects (rules_state or consumer_offsets)."""
    assert table in ("rules_state", "consumer_offsets")
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT topic, partition, next_offset FROM {table} WHERE consumer_group = %s",
            (group,),
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


async def expected(
    kafka: KafkaSettings, catalogue: Catalogue | None = None
) -> tuple[dict[object, AlertTransition], dict[object, IndicatorValue]]:
    """What the rules engine must have emitted for the source topics as they stand: one
    uninterrupted pass of the pure engine over their partition logs."""
    topics = kafka.topics
    logs: dict[tuple[str, int], list[tuple[bytes, bool]]] = {}
    partitions: dict[str, int] = {}
    for topic in (topics.readings, topics.tickets):
        per_partition = await read_log(kafka, topic)
        partitions[topic] = len(per_partition)
        logs.update({(topic, p): records for p, records in per_partition.items()})
    out = replay(
        Definitions(catalogue or Catalogue.from_yaml()),
        logs,
        partitions,
        {Source.SENSOR: topics.readings, Source.TICKETS: topics.tickets},
    )
    return {t.transition_id: t for t in out.transitions}, {v.value_id: v for v in out.values}


def frame_size(raw: bytes) -> int:
    """Readings in a frame of the readings topic, from its bytes (its ``ts`` column holds only
    integers); 0 for anything else (ticks, poison)."""
    start = raw.find(b'"ts":[')
    if start < 0:
        return 0
    end = raw.find(b"]", start)
    return 0 if end < 0 else raw.count(b",", start, end) + 1


class ReadingCounts:
    """How many readings the frames of the readings topic hold up to each offset, kept by a
    consumer tailing the topic in a thread of its own: lag in records, told in readings."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.before: dict[int, list[int]] = {}  # partition -> readings before each offset
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._tail()), daemon=True)
        self.thread.start()

    async def _tail(self) -> None:
        topic = self.kafka.topics.readings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            for tp in tps:
                self.before[tp.partition] = [0]
            while not self.stop.is_set():
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    counts = self.before[tp.partition]
                    for r in records:
                        while len(counts) <= r.offset:  # offsets a transaction marker took
                            counts.append(counts[-1])
                        counts.append(counts[-1] + frame_size(r.value or b""))
        finally:
            await consumer.stop()

    def upto(self, partition: int, offset: int, timeout: float = 60.0) -> int:
        """Readings in the partition's records before ``offset``, once the tail has read them."""
        deadline = time.monotonic() + timeout
        while len(self.before.get(partition, ())) <= offset:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the readings topic's tail did not reach {offset} in time")
            time.sleep(0.05)
        return self.before[partition][offset]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
