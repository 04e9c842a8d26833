"""The shared consumer loop on the real broker: a busy partition does not starve a quiet one;
after the effects' store was away, it goes on from the stored offsets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.config import KafkaSettings
from services.kafka import Batch, Unavailable, run_consumer
from services.local.broker import LocalBroker

BULK, TRICKLE = 20_000, 5


class Recorder:
    """Notes which topics each batch held, taking a while over each as a real handler does.
    Handling the first batch, it puts the quiet topic's records on the broker: the busy
    topic's fetched backlog is then ahead of them in the consumer. Stops the loop once
    everything is in."""

    def __init__(self, stop: asyncio.Event, producer: AIOKafkaProducer, trickle: str) -> None:
        self.stop = stop
        self.producer = producer
        self.trickle = trickle
        self.batches: list[dict[str, int]] = []

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {}

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        return None

    async def handle(self, batch: Batch) -> None:
        self.batches.append({tp.topic: len(records) for tp, records in batch.items() if records})
        if len(self.batches) == 1:
            for i in range(TRICKLE):
                await self.producer.send_and_wait(self.trickle, b"mark %d" % i)
        await asyncio.sleep(0.02)
        if sum(sum(b.values()) for b in self.batches) >= BULK + TRICKLE:
            self.stop.set()


async def _fill(kafka: KafkaSettings, producer: AIOKafkaProducer, bulk: str, trickle: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (bulk, trickle)])
    finally:
        await admin.close()
    for i in range(BULK):
        await producer.send(bulk, b"reading %d" % i)
    await producer.flush()


def test_quiet_partition_is_not_starved_by_a_backlogged_one(broker: LocalBroker) -> None:
    """The busy topic's backlog needs 40 batches at the cap; the quiet topic's records, put
    on the broker meanwhile, must not wait for all of them (the rules engine's roll-up
    partition behind its readings partition)."""
    prefix = f"loop-{uuid.uuid4().hex[:8]}"
    bulk, trickle = f"{prefix}.a-bulk", f"{prefix}.b-trickle"
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, max_batch_records=500)

    async def scenario() -> Recorder:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=20)
        await producer.start()
        try:
            await _fill(kafka, producer, bulk, trickle)
            stop = asyncio.Event()
            recorder = Recorder(stop, producer, trickle)
            await asyncio.wait_for(
                run_consumer(
                    kafka,
                    group_id=f"{prefix}-group",
                    topics=[bulk, trickle],
                    handler=recorder,
                    stop=stop,
                ),
                timeout=60,
            )
        finally:
            await producer.stop()
        return recorder

    recorder = asyncio.run(scenario())
    seen = recorder.batches
    assert sum(b.get(bulk, 0) for b in seen) == BULK
    assert sum(b.get(trickle, 0) for b in seen) == TRICKLE
    assert all(sum(b.values()) <= 2 * 500 for b in seen), "a batch overran twice the cap"
    last_bulk = max(i for i, b in enumerate(seen) if bulk in b)
    first_trickle = next(i for i, b in enumerate(seen) if trickle in b)
    assert first_trickle < last_bulk, (
        f"the quiet topic's records waited until batch {first_trickle} of {len(seen)}, "
        f"after the busy one's backlog (its last batch {last_bulk})"
    )


class LosingStore:
    """A handler keeping its offsets with its effects, in memory. Once, after ``lose_after``
    records, the last batch's commit does not last (as in a database crash before it reached
    the disk) and the next batch finds the store away. Every batch must start exactly where
    the stored offset stands: a gap is a lost batch."""

    def __init__(self, stop: asyncio.Event, total: int, lose_after: int) -> None:
        self.stop = stop
        self.total = total
        self.lose_after = lose_after
        self.stored: dict[TopicPartition, int] = {}
        self.previous: dict[TopicPartition, int] = {}
        self.handled = 0
        self.lost_at: int | None = None
        self.starts: list[int] = []

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {tp: offset for tp, offset in self.stored.items() if tp in partitions}

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        return None

    async def handle(self, batch: Batch) -> None:
        if self.lost_at is None and self.handled >= self.lose_after:
            self.lost_at = self.handled
            self.stored = dict(self.previous)
            raise Unavailable("the store crashed; its last commit did not last")
        for tp, records in batch.items():
            if records:
                assert records[0].offset == self.stored.get(tp, 0), "a batch was skipped"
        self.previous = dict(self.stored)
        for tp, records in batch.items():
            if records:
                self.starts.append(records[0].offset)
                self.stored[tp] = records[-1].offset + 1
                self.handled += len(records)
        if sum(self.stored.values()) >= self.total:
            self.stop.set()


def test_after_the_store_was_away_the_loop_resumes_from_its_stored_offsets(
    broker: LocalBroker,
) -> None:
    """A commit the store lost leaves its stored offset behind the consumer: the loop must go
    on from the stored offsets, not from where the failed batch began."""
    topic = f"loop-{uuid.uuid4().hex[:8]}.lossy"
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, max_batch_records=100)
    total = 1_000

    async def scenario() -> LosingStore:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=20)
        await producer.start()
        try:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, 1, 1)])
            finally:
                await admin.close()
            for i in range(total):
                await producer.send(topic, b"reading %d" % i)
            await producer.flush()
            stop = asyncio.Event()
            store = LosingStore(stop, total, lose_after=300)
            await asyncio.wait_for(
                run_consumer(
                    kafka, group_id=f"{topic}-group", topics=[topic], handler=store, stop=stop
                ),
                timeout=60,
            )
        finally:
            await producer.stop()
        return store

    store = asyncio.run(scenario())
    assert store.lost_at is not None
    assert sum(store.stored.values()) == total
    # The batch whose commit was lost was read again: some start repeats.
    assert len(store.starts) > len(set(store.starts))
