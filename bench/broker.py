"""The local broker (Tansu 0.6, memory store) on its own: what a fetch costs as stored batches
pile up, and how long a record waits for a consumer at a given fetch max wait.

    python -m bench.broker [--stored 3000,60000] [--waits 50,20,10] [--seconds 10]

``stored``: for each count, a fresh broker is given that many one-record batches over three
partitions, then one producer sends three 100-record batches every 20 ms while one consumer
reads them; the broker's CPU over those ``--seconds`` is printed. The memory store lists
all of a partition's batches on every fetch that finds new data, so this grows with what is
stored (why the local stack gives its topics one partition: a post keyed over three
partitions stores three batches).

``waits``: for each max wait, batches every 13 ms, and how long the oldest record of each
batch the consumer got had waited since it was produced. A fetch that finds nothing sleeps
out the rest of its max wait before it looks again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.scratch import scratch
from services.local.broker import LocalBroker
from services.local.processes import free_port

TOPIC, PARTITIONS = "bench", 3
PAYLOAD = b"x" * 200


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


def run(
    *, stored: int, wait_ms: int, every: float, seconds: float
) -> tuple[float, list[float], float]:
    """On a fresh broker: its CPU seconds, and the waits and sizes of what was fetched."""
    work = scratch("broker")
    broker = LocalBroker(free_port(), work / "logs" / "broker.log")
    broker.start()
    try:
        assert broker.process is not None
        pid = broker.process.pid
        return asyncio.run(
            feed_and_read(
                broker.bootstrap,
                stored=stored,
                wait_ms=wait_ms,
                every=every,
                seconds=seconds,
                pid=pid,
            )
        )
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", default="3000,60000")
    parser.add_argument("--waits", default="50,20,10")
    parser.add_argument("--seconds", type=float, default=10.0)
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


if __name__ == "__main__":
    main()
