"""The rules engine process: readings in, alert transitions out, through the pure core."""

from __future__ import annotations

import asyncio
import contextlib
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

        self.emergency_districts: frozenset[str] = frozenset()
        self.city_emergency = False

    def use(
        self, catalogue: Catalogue, emergency_districts: frozenset[str], city_emergency: bool
    ) -> None:
        """New definitions or emergency scopes, applied from the next reading on."""
        self.catalogue = catalogue
        self.emergency_districts = emergency_districts
        self.city_emergency = city_emergency
        for evaluator in self.evaluators.values():
            self._configure(evaluator)

    def _configure(self, evaluator: Evaluator) -> Evaluator:
        evaluator.use(
            self.catalogue,
            emergency_districts=self.emergency_districts,
            city_emergency=self.city_emergency,
        )
        return evaluator

    def _evaluator(self, tp: TopicPartition) -> Evaluator:
        found = self.evaluators.get(tp)
        if found is None:
            found = self.evaluators[tp] = self._configure(Evaluator(self.catalogue))
        return found

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        for tp in partitions:
            self._evaluator(tp)
        return {}

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.evaluators.pop(tp, None)

    async def handle(self, batch: Batch) -> None:
        sends = []
        for tp, records in batch.items():
            evaluator = self._evaluator(tp)
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
    handler = RulesHandler(settings, catalogue, producer)
    watcher = asyncio.create_task(watch_definitions(settings, handler, stop))
    try:
        await run_consumer(
            settings.kafka,
            group_id=settings.rules.consumer_group,
            topics=[settings.kafka.topics.readings],
            handler=handler,
            stop=stop,
        )
    finally:
        watcher.cancel()
        await producer.stop()


async def watch_definitions(settings: Settings, handler: RulesHandler, stop: asyncio.Event) -> None:
    """Poll the definitions version in PostgreSQL; on a change load the live definitions and
    emergency switches into the running engine (no restart). While PostgreSQL holds no
    definitions the catalogue file stays in force; while it is unreachable the last ones do."""
    import psycopg

    from services.indicators import store

    seen = -1
    url = settings.db.url.get_secret_value()
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                at = await store.version(conn)
                if at != seen:
                    at, catalogue = await store.current(conn)
                    switches = await store.emergency(conn)
                    active = frozenset(s.scope for s in switches if s.active)
                    if len(catalogue):
                        handler.use(catalogue, active - {store.CITY}, store.CITY in active)
                        log.info(
                            "rules engine now at definitions version %d (%d indicators, "
                            "emergency: %s)",
                            at,
                            len(catalogue),
                            ",".join(sorted(active)) or "none",
                        )
                    seen = at
        except (psycopg.Error, OSError) as exc:
            log.warning("definitions poll failed, keeping the current ones: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.rules.definitions_poll_seconds)
