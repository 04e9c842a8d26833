"""The ingest services' hand-off to Kafka: readings batched per partition, retries recognised."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from ingest.batch import Accepted, RecentIds
from schemas.deadletter import DeadLetter
from services.config import Settings
from services.kafka import encode


class BrokerUnavailable(Exception):
    """The broker did not acknowledge the data in time; nothing may be reported as accepted."""


class Gateway:
    """The ingest service's hand-off to Kafka."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.topics = settings.kafka.topics
        self.producer = producer
        self.timeout = settings.ingest.delivery_timeout_seconds
        self.recent = RecentIds(settings.ingest.dedupe_capacity)
        self.partitioner = DefaultPartitioner()
        self._partitions: list[int] = []
        self._placed: dict[str, int] = {}  # device -> partition, while partitions stay the same

    async def publish(self, readings: list[Accepted], letters: list[DeadLetter]) -> None:
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

    async def _send_readings(self, readings: list[Accepted]) -> list[asyncio.Future[Any]]:
        """Readings in one batch per partition (far cheaper than a send per record), placed
        by the producer's own key partitioner so a device keeps its partition."""
        topic = self.topics.readings
        partitions = sorted(await self.producer.partitions_for(topic))
        if partitions != self._partitions:
            self._partitions, self._placed = partitions, {}
        placed = self._placed
        by_partition: dict[int, list[Accepted]] = {}
        for r in readings:
            partition = placed.get(r.device_id)
            if partition is None:
                # murmur2 in pure Python cost a sixth of ingest's time: once per device.
                partition = self.partitioner(r.key, partitions, partitions)
                if len(placed) < 1_000_000:
                    placed[r.device_id] = partition
            by_partition.setdefault(partition, []).append(r)
        sends: list[asyncio.Future[Any]] = []
        for partition, items in by_partition.items():
            batch = self.producer.create_batch()
            for r in items:
                value = r.encode()
                if batch.append(key=r.key, value=value, timestamp=None) is None:
                    sends.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    batch.append(key=r.key, value=value, timestamp=None)
            sends.append(await self.producer.send_batch(batch, topic, partition=partition))
        return sends

    async def accept(self, readings: list[Accepted], letters: list[DeadLetter]) -> list[Accepted]:
        """Publish the readings not accepted before (and the letters); returns those sent."""
        ids = [r.reading_id for r in readings]
        fresh = self.recent.claim(ids)
        new = [r for r, is_new in zip(readings, fresh, strict=True) if is_new]
        claimed = [r.reading_id for r in new]
        try:
            await self.publish(new, letters)
        except BaseException:
            self.recent.settle(claimed, delivered=False)
            raise
        self.recent.settle(claimed, delivered=True)
        return new
