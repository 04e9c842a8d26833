"""The local broker (Tansu 0.6, memory store) on its own: what a fetch costs as stored batches
pile up, and how long a record waits for a consumer at a given fetch max wait.

    python -m bench.broker [--stored 3000,60000] [--waits 50,20,10] [--seconds 10]
                           [--flows 30000x300,30000x1500,135000x3000] [--lingers 0,5]

``stored``: for each count, a fresh broker is given that many one-record batches over three
partitions, then one producer sends three 100-record batches every 20 ms while one consumer
reads them; the broker's CPU over those ``--seconds`` is printed. The memory store lists
all of a partition's batches on every fetch that finds new data, so this grows with what is
stored (why the local stack gives its topics one partition: a post keyed over three
partitions stores three batches).

``waits``: for each max wait, batches every 13 ms, and how long the oldest record of each
batch the consumer got had waited since it was produced. A fetch that finds nothing sleeps
out the rest of its max wait before it looks again.

``flows``: RATExSIZE, records (of a reading's size) a second in batches of SIZE to one
partition, read whole by three consumer groups (as the rules engine and the writer read the
readings topic): the broker's CPU per record. What it costs goes by the batch far more than
by the record, so this says how much of the readings' rate the broker alone allows at a
given batch size.

``lingers``: eight requests at once, twenty times, each handing 100 records to
``KeyedBatches`` (as ingest does) with that linger in ms, through a producer lingering 5 ms:
how long each waited for the broker's acknowledgement. With no linger each request is a
batch of its own, and the producer sends a partition's batches one at a time, each after its
linger.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.scratch import scratch
from services.kafka import KeyedBatches
from services.local.broker import LocalBroker
from services.local.processes import free_port

T = TypeVar("T")
TOPIC, PARTITIONS = "bench", 3
PAYLOAD = b"x" * 200
# A reading as ingest puts it on the topic.
READING = (
    b'{"reading_id":"5f0c3c1e-8a7e-5c1b-9d0e-2c1f0a9b8c7d","device_id":"wl-gz-000123",'
    b'"metric":"waterlogging_depth","value":12.5,"unit":"cm","ts":"2026-12-04T11:00:00.000Z",'
    b'"location":{"lon":113.3,"lat":23.1,"grid":"g1","street":"s1","district":"d1"}}'
)
GROUPS = 3
ROUNDS = 20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def send(producer: AIOKafkaProducer, records: int) -> list[asyncio.Future[object]]:
    """One batch of ``records`` to each partition."""
    sends = []
    for partition in range(PARTITIONS):
        batch = producer.create_batch()
        for _ in range(records):
            batch.append(key=None, value=PAYLOAD, timestamp=None)
        batch.close()
        sends.append(await producer.send_batch(batch, TOPIC, partition=partition))
    return sends


async def feed_and_read(
    bootstrap: str, *, stored: int, wait_ms: int, every: float, seconds: float, pid: int
) -> tuple[float, list[float], float]:
    """Store ``stored`` batches, then feed and read for ``seconds``: the broker's CPU seconds
    meanwhile, and for each partition's records in each fetch, how long (ms) the oldest had
    waited since it was produced; and the records read per second."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id="bench",
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
    )
    try:
        for _ in range(stored // (100 * PARTITIONS)):
            await asyncio.gather(*[f for _ in range(100) for f in await send(producer, 1)])
        await consumer.start()
        await asyncio.sleep(2)  # the group formed, positions at the end
        began, stop = cpu_seconds(pid), time.monotonic() + seconds
        waits: list[float] = []
        read = 0

        async def produce() -> None:
            while time.monotonic() < stop:
                await asyncio.gather(*await send(producer, 100))
                await asyncio.sleep(every)

        async def consume() -> None:
            nonlocal read
            while time.monotonic() < stop + 0.5:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.time() * 1000
                waits.extend(now - records[0].timestamp for records in batch.values())
                read += sum(len(records) for records in batch.values())

        await asyncio.gather(produce(), consume())
        return cpu_seconds(pid) - began, waits, read / seconds
    finally:
        await consumer.stop()
        await producer.stop()


async def flow(
    bootstrap: str, pid: int, *, rate: int, size: int, seconds: float
) -> tuple[float, int, list[int]]:
    """``rate`` records/s in batches of ``size`` to one partition for ``seconds``, read by
    ``GROUPS`` consumer groups: the broker's CPU seconds, records sent, records each read."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    await admin.close()
    big = 16 * 1024 * 1024
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=big, max_request_size=big
    )
    await producer.start()
    consumers = [
        AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=bootstrap,
            group_id=f"bench-{n}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=big,
            fetch_max_bytes=big,
        )
        for n in range(GROUPS)
    ]
    try:
        for consumer in consumers:
            await consumer.start()
        await asyncio.sleep(2)
        began, stop = cpu_seconds(pid), time.monotonic() + seconds
        sent, read = 0, [0] * GROUPS

        async def produce() -> None:
            nonlocal sent
            due = time.monotonic()
            while time.monotonic() < stop:
                batch = producer.create_batch()
                for _ in range(size):
                    batch.append(key=None, value=READING, timestamp=None)
                batch.close()
                await (await producer.send_batch(batch, TOPIC, partition=0))
                sent += size
                due += size / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))

        async def consume(n: int) -> None:
            while time.monotonic() < stop + 1:
                got = await consumers[n].getmany(timeout_ms=100, max_records=100_000)
                read[n] += sum(len(records) for records in got.values())

        await asyncio.gather(produce(), *(consume(n) for n in range(GROUPS)))
        return cpu_seconds(pid) - began, sent, read
    finally:
        for consumer in consumers:
            await consumer.stop()
        await producer.stop()


async def posts(bootstrap: str, pid: int, *, linger_ms: int) -> list[float]:
    """Each request's wait (ms) for its records' acknowledgement: ``ROUNDS`` of eight."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    batches = KeyedBatches(producer, linger=linger_ms / 1000)
    records = [(b"device", READING)] * 100

    async def request() -> float:
        began = time.monotonic()
        await asyncio.gather(*await batches.send(TOPIC, records))
        return (time.monotonic() - began) * 1000

    try:
        waits: list[float] = []
        for _ in range(ROUNDS):
            waits += await asyncio.gather(*(request() for _ in range(8)))
            await asyncio.sleep(0.05)
        return waits
    finally:
        await producer.stop()


def on_fresh_broker(measure: Callable[[str, int], Coroutine[Any, Any, T]]) -> T:
    """``measure(bootstrap, pid)`` against a broker started for it."""
    work = scratch("broker")
    broker = LocalBroker(free_port(), work / "logs" / "broker.log")
    broker.start()
    try:
        assert broker.process is not None
        return asyncio.run(measure(broker.bootstrap, broker.process.pid))
    finally:
        broker.stop()


def run(
    *, stored: int, wait_ms: int, every: float, seconds: float
) -> tuple[float, list[float], float]:
    """On a fresh broker: its CPU seconds, and the waits and sizes of what was fetched."""
    return on_fresh_broker(
        lambda bootstrap, pid: feed_and_read(
            bootstrap, stored=stored, wait_ms=wait_ms, every=every, seconds=seconds, pid=pid
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", default="3000,60000")
    parser.add_argument("--waits", default="50,20,10")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flows", default="30000x300,30000x1500,135000x3000")
    parser.add_argument("--lingers", default="0,5")
    args = parser.parse_args()
    for stored in [int(n) for n in args.stored.split(",") if n]:
        used, _, rate = run(stored=stored, wait_ms=50, every=0.02, seconds=args.seconds)
        print(
            f"{stored:>7,} batches stored: the broker used {used / args.seconds:.0%} of a core "
            f"while one consumer read {rate:,.0f} records/s"
        )
    for wait_ms in [int(n) for n in args.waits.split(",") if n]:
        used, waits, _ = run(stored=0, wait_ms=wait_ms, every=0.013, seconds=args.seconds)
        q = statistics.quantiles(waits, n=100)
        print(
            f"fetch_max_wait_ms {wait_ms:>3}: oldest record waited p50 {q[49]:.0f} ms, "
            f"p99 {q[98]:.0f} ms; the broker used {used / args.seconds:.0%} of a core"
        )
    for spec in [f for f in args.flows.split(",") if f]:
        rate, size = (int(n) for n in spec.split("x"))
        used, sent, read = on_fresh_broker(
            partial(flow, rate=rate, size=size, seconds=args.seconds)
        )
        print(
            f"{rate:>7,} records/s asked in batches of {size:,}: {sent / args.seconds:,.0f}/s "
            f"sent, each of {GROUPS} groups read {min(read) / max(sent, 1):.0%} of it; the "
            f"broker used {used / args.seconds:.0%} of a core, "
            f"{used / max(sent, 1) * 1e6:.1f} us a record"
        )
    for linger_ms in [int(n) for n in args.lingers.split(",") if n]:
        waits = on_fresh_broker(partial(posts, linger_ms=linger_ms))
        q = statistics.quantiles(waits, n=100)
        print(
            f"8 requests at once, linger {linger_ms} ms: each waited p50 {q[49]:.0f} ms, "
            f"max {max(waits):.0f} ms for the broker's acknowledgement"
        )


if __name__ == "__main__":
    main()
