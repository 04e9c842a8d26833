"""The ingest services' hand-off to Kafka: readings batched per partition, retries recognised."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest.batch import Accepted, Columns, RecentIds, frames
from schemas.deadletter import DeadLetter
from services.config import Settings
from services.kafka import KeyedBatches, encode


class BrokerUnavailable(Exception):
    """The broker did not acknowledge the data in time; nothing may be reported as accepted."""


class Gateway:
    """The ingest service's hand-off to Kafka."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.topics = settings.kafka.topics
        self.producer = producer
        self.timeout = settings.ingest.delivery_timeout_seconds
        self.recent = RecentIds(settings.ingest.dedupe_capacity)
        # Concurrent requests' readings share a batch per partition: with a batch each, the
        # producer sent them one after another, each after its linger, and requests queued.
        self.batches = KeyedBatches(producer, linger=settings.kafka.linger_ms / 1000)

    async def publish(self, readings: Sequence[Accepted], letters: list[DeadLetter]) -> None:
        """Hand everything to the broker and wait for its acknowledgement, or raise."""
        try:
            async with asyncio.timeout(self.timeout):
                sends = await self._send_readings(readings) if readings else []
                sends += [
                    await self.producer.send(self.topics.dead_letter, encode(letter))
                    for letter in letters
                ]
                await asyncio.gather(*sends)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc

    async def _send_readings(self, readings: Sequence[Accepted]) -> list[asyncio.Future[Any]]:
        """Readings in frames, one batch per partition; a device keeps its partition (its
        id hashes to it, as a record keyed by it would)."""
        topic = self.topics.readings
        if isinstance(readings, Columns):
            placed = await self.batches.place(topic, list(map(str.encode, readings.device_id)))
            by_partition = {
                p: (readings if len(items) == len(readings) else readings.take(items)).frames()
                for p, items in placed.items()
            }
        else:
            placed = await self.batches.place(topic, [r.device_id.encode() for r in readings])
            by_partition = {p: frames([readings[i] for i in items]) for p, items in placed.items()}
        return await self.batches.send_placed(
            topic, {p: [(None, frame) for frame in records] for p, records in by_partition.items()}
        )

    async def accept(
        self, readings: Sequence[Accepted], letters: list[DeadLetter]
    ) -> Sequence[Accepted]:
        """Publish the readings not accepted before (and the letters); returns those sent."""
        ids = readings.idents() if isinstance(readings, Columns) else [r.ident for r in readings]
        fresh = self.recent.claim(ids)
        if False in fresh:
            new: Sequence[Accepted] = [r for r, f in zip(readings, fresh, strict=True) if f]
            claimed = [r.ident for r in new]
        else:  # the usual case: nothing seen before (a frame stays in its columns)
            new, claimed = readings, ids
        try:
            await self.publish(new, letters)
        except BaseException:
            self.recent.settle(claimed, delivered=False)
            raise
        self.recent.settle(claimed, delivered=True)
        return new
