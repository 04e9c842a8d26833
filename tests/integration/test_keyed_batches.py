"""KeyedBatches with a linger, on the real broker: concurrent senders share a batch."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.kafka import KeyedBatches
from services.local.broker import LocalBroker

SENDERS, EACH = 8, 50


class Counting(KeyedBatches):
    """Counts the batches given to the producer."""

    handed = 0

    async def _send(self, *args: Any) -> None:
        self.handed += 1
        await super()._send(*args)


async def _topic(bootstrap: str, partitions: int) -> str:
    topic = f"batches-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def _read(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[tuple[int, bytes, bytes]] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += [(r.partition, r.key or b"", r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return got


def test_concurrent_senders_share_one_batch_per_partition_in_order(broker: LocalBroker) -> None:
    async def run() -> tuple[int, list[tuple[int, bytes, bytes]]]:
        topic = await _topic(broker.bootstrap, 3)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            batches = Counting(producer, linger=0.05)

            async def sender(n: int) -> None:
                await asyncio.sleep(n * 0.002)  # requests finishing one after another
                records = [(b"dev-%d" % (i % 6), b"%d:%d" % (n, i)) for i in range(EACH)]
                await asyncio.gather(*await batches.send(topic, records))

            await asyncio.gather(*(sender(n) for n in range(SENDERS)))
            return batches.handed, await _read(broker.bootstrap, topic, SENDERS * EACH)
        finally:
            await producer.stop()

    handed, got = asyncio.run(run())
    # Six keys over three partitions: one batch for each partition the keys reach.
    assert handed == len({p for p, _, _ in got}) <= 3
    assert sorted(v for _, _, v in got) == sorted(
        b"%d:%d" % (n, i) for n in range(SENDERS) for i in range(EACH)
    )
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for _, key, value in got:
        n, i = value.split(b":")
        by_key.setdefault(key, []).append((int(n), int(i)))
    for sent in by_key.values():  # a key's records stay in the order they were sent
        assert sent == sorted(sent)


def test_a_full_batch_goes_at_once_and_a_sender_giving_up_cancels_only_its_wait(
    broker: LocalBroker,
) -> None:
    async def run() -> tuple[int, int, list[tuple[int, bytes, bytes]]]:
        topic = await _topic(broker.bootstrap, 1)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_batch_size=16_384)
        await producer.start()
        try:
            batches = Counting(producer, linger=0.2)
            big = [(b"k", b"x" * 1000) for _ in range(40)]  # more than one 16 kB batch holds
            waits = await batches.send(topic, big)
            impatient = await batches.send(topic, [(b"k", b"late")])
            # The one that gives up: its wait is cancelled, the shared batch still goes.
            for wait in impatient:
                wait.cancel()
            await asyncio.gather(*waits)
            return len(waits), batches.handed, await _read(broker.bootstrap, topic, 41)
        finally:
            await producer.stop()

    futures, handed, got = asyncio.run(run())
    assert futures >= 3
    assert handed == futures  # the full batches went before the linger ran out
    assert [v for _, _, v in got][-1] == b"late"
    assert len(got) == 41


class SlowHandOver(KeyedBatches):
    """Its first batch takes a while to be given to the producer (a producer busy sending)."""

    handed = 0

    async def _send(self, *args: Any) -> None:
        self.handed += 1
        if self.handed == 1:
            await asyncio.sleep(0.4)
        await super()._send(*args)


def test_a_lingered_batch_stays_open_while_the_one_before_it_waits(broker: LocalBroker) -> None:
    async def run() -> tuple[int, list[bytes]]:
        topic = await _topic(broker.bootstrap, 1)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            batches = SlowHandOver(producer, linger=0.02)
            first = await batches.send(topic, [(b"k", b"1")])
            await asyncio.sleep(0.05)  # its linger is over: handed over, slowly
            second = await batches.send(topic, [(b"k", b"2")])
            await asyncio.sleep(0.1)  # the second's linger is over too, the first still going
            third = await batches.send(topic, [(b"k", b"3")])
            await asyncio.gather(*first, *second, *third)
            got = await _read(broker.bootstrap, topic, 3)
            return batches.handed, [v for _, _, v in got]
        finally:
            await producer.stop()

    handed, values = asyncio.run(run())
    assert handed == 2  # the third joined the second, which waited for the first
    assert values == [b"1", b"2", b"3"]
