"""The rules engine process: readings in, alert transitions out, through the pure core."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from rules.evaluate import Evaluator
from rules.indicators import Catalogue
from schemas.base import describe_errors
from schemas.readings import SensorReading
from services.config import Settings
from services.kafka import Batch, dead_letter, encode, make_producer, run_consumer, wait_for_broker

log = logging.getLogger(__name__)

SOURCE = "rules"


class RulesHandler:
    """Keeps one evaluator per owned partition, so state moves with its partition."""

    def __init__(
        self, settings: Settings, catalogue: Catalogue, producer: AIOKafkaProducer
    ) -> None:
        self.topics = settings.kafka.topics
        self.catalogue = catalogue
        self.producer = producer
        self.evaluators: dict[TopicPartition, Evaluator] = {}

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        for tp in partitions:
            self.evaluators.setdefault(tp, Evaluator(self.catalogue))
        return {}

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.evaluators.pop(tp, None)

    async def handle(self, batch: Batch) -> None:
        sends = []
        for tp, records in batch.items():
            evaluator = self.evaluators.setdefault(tp, Evaluator(self.catalogue))
            for record in records:
                raw = record.value or b""
                try:
                    reading = SensorReading.model_validate_json(raw)
                except ValidationError as exc:
                    letter = dead_letter(SOURCE, describe_errors(exc), raw, record)
                    sends.append(await self.producer.send(self.topics.dead_letter, encode(letter)))
                    continue
                for transition in evaluator.apply(reading):
                    sends.append(
                        await self.producer.send(
                            self.topics.alerts, encode(transition), key=transition.key
                        )
                    )
        # Effects first: every transition acknowledged by the broker before offsets move on.
        if sends:
            await asyncio.gather(*sends)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the rules engine until ``stop`` is set."""
    catalogue = Catalogue.from_yaml(settings.rules.catalogue)
    log.info("rules engine loaded %d indicators", len(catalogue))
    await wait_for_broker(settings.kafka)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await run_consumer(
            settings.kafka,
            group_id=settings.rules.consumer_group,
            topics=[settings.kafka.topics.readings],
            handler=RulesHandler(settings, catalogue, producer),
            stop=stop,
        )
    finally:
        await producer.stop()
