"""The storage writer: readings and alert transitions from Kafka into PostgreSQL, exactly once.

Each batch is written in one transaction together with the Kafka offsets it ends at
(``consumer_offsets``). After a crash the writer resumes from those stored offsets, so a
batch whose rows committed is never written again, and one that did not commit is written
whole. Readings go in by binary COPY; alerts are upserted by their deterministic ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import psycopg
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from schemas.alerts import AlertTransition
from schemas.base import describe_errors
from schemas.readings import SensorReading
from services.config import Settings
from services.kafka import (
    Batch,
    Fenced,
    dead_letter,
    encode,
    make_producer,
    run_consumer,
    wait_for_broker,
)

log = logging.getLogger(__name__)

SOURCE = "writer"

READING_COLUMNS = (
    "ts",
    "reading_id",
    "device_id",
    "metric",
    "value",
    "unit",
    "grid",
    "street",
    "district",
    "lon",
    "lat",
    "ingested_at",
)
READING_TYPES = (
    "timestamptz",
    "uuid",
    "text",
    "text",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "float8",
    "float8",
    "timestamptz",
)
COPY_READINGS = f"COPY readings ({', '.join(READING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"

INSERT_TRANSITION = """
INSERT INTO alert_transitions (
    transition_id, alert_id, seq, kind, indicator, scope_level, scope_id, level, previous_level,
    value, threshold, occurrences, opened_at, observed_at, reading_id)
VALUES (%(transition_id)s, %(alert_id)s, %(seq)s, %(kind)s, %(indicator)s, %(scope_level)s,
        %(scope_id)s, %(level)s, %(previous_level)s, %(value)s, %(threshold)s, %(occurrences)s,
        %(opened_at)s, %(observed_at)s, %(reading_id)s)
ON CONFLICT (transition_id) DO NOTHING
"""

# Later transitions win; a redelivered older one changes nothing.
UPSERT_ALERT = """
INSERT INTO alerts (
    alert_id, indicator, scope_level, scope_id, status, level, peak_level, value, threshold,
    occurrences, opened_at, updated_at, resolved_at, last_seq)
VALUES (%(alert_id)s, %(indicator)s, %(scope_level)s, %(scope_id)s, %(status)s, %(level)s,
        %(peak_level)s, %(value)s, %(threshold)s, %(occurrences)s, %(opened_at)s,
        %(observed_at)s, %(resolved_at)s, %(seq)s)
ON CONFLICT (alert_id) DO UPDATE SET
    status = EXCLUDED.status,
    level = EXCLUDED.level,
    peak_level = CASE
        WHEN array_position(ARRAY['blue', 'yellow', 'orange', 'red'], EXCLUDED.peak_level)
           > array_position(ARRAY['blue', 'yellow', 'orange', 'red'], alerts.peak_level)
        THEN EXCLUDED.peak_level ELSE alerts.peak_level END,
    value = EXCLUDED.value,
    threshold = EXCLUDED.threshold,
    occurrences = EXCLUDED.occurrences,
    updated_at = EXCLUDED.updated_at,
    resolved_at = EXCLUDED.resolved_at,
    last_seq = EXCLUDED.last_seq
WHERE alerts.last_seq < EXCLUDED.last_seq
"""

# Compare-and-set: advance only from at or before where this batch starts. A member that
# lost the partition in a rebalance but is still writing (a zombie) finds the offset moved
# past its batch, writes nothing, and re-reads.
ADVANCE_OFFSET = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at)
VALUES (%(group)s, %(topic)s, %(partition)s, %(next)s, now())
ON CONFLICT (consumer_group, topic, partition)
DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
WHERE consumer_offsets.next_offset <= %(first)s
"""


def reading_row(reading: SensorReading, ingested_at: datetime) -> tuple[object, ...]:
    """A reading as a row in ``READING_COLUMNS`` order."""
    loc = reading.location
    return (
        reading.ts,
        reading.reading_id,
        reading.device_id,
        reading.metric,
        reading.value,
        reading.unit,
        loc.grid,
        loc.street,
        loc.district,
        loc.lon,
        loc.lat,
        ingested_at,
    )


def alert_params(t: AlertTransition) -> dict[str, object]:
    """Parameters for the transition insert and the alert upsert."""
    peak = t.level or t.previous_level
    return {
        **t.model_dump(mode="python"),
        "status": "resolved" if t.level is None else "firing",
        "peak_level": peak.value if peak else None,
        "resolved_at": t.observed_at if t.level is None else None,
    }


@dataclass
class Decoded:
    """A batch sorted into what goes where."""

    readings: list[tuple[object, ...]] = field(default_factory=list)
    transitions: list[AlertTransition] = field(default_factory=list)
    rejected: list[tuple[str, ConsumerRecord[bytes, bytes]]] = field(default_factory=list)


def record_time(record: ConsumerRecord[bytes, bytes]) -> datetime:
    """When the broker took the record (the time ingest handed it over)."""
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)


class WriterHandler:
    """Writes each batch and its end offsets in one PostgreSQL transaction."""

    def __init__(
        self,
        settings: Settings,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        producer: AIOKafkaProducer,
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.group = settings.writer.consumer_group
        self.conn = conn
        self.producer = producer

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        # Its own connection: the rebalance listener may run while a batch's transaction is
        # open on the writing one, and must read committed offsets only.
        url = self.settings.db.url.get_secret_value()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT topic, partition, next_offset FROM consumer_offsets "
                "WHERE consumer_group = %s",
                (self.group,),
            )
            rows = cast(list[tuple[str, int, int]], await cur.fetchall())
        kept = {TopicPartition(t, p): o for t, p, o in rows}
        return {tp: kept[tp] for tp in partitions if tp in kept}

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        return None  # nothing held in memory between batches

    def decode(self, batch: Batch) -> Decoded:
        out = Decoded()
        for tp, records in batch.items():
            for record in records:
                raw = record.value or b""
                try:
                    if tp.topic == self.topics.readings:
                        reading = SensorReading.model_validate_json(raw)
                        out.readings.append(reading_row(reading, record_time(record)))
                    elif tp.topic == self.topics.alerts:
                        out.transitions.append(AlertTransition.model_validate_json(raw))
                except ValidationError as exc:
                    out.rejected.append((describe_errors(exc), record))
        return out

    async def handle(self, batch: Batch) -> None:
        try:
            await self.write(batch)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # A record the contracts let through but PostgreSQL refuses must not stop the
            # writer: find it by writing record by record, dead-letter it, keep the rest.
            log.warning("PostgreSQL refused part of a batch (%s); writing it record by record", exc)
            for tp, records in batch.items():
                for record in records:
                    try:
                        # Undecodable records were dead-lettered by the first attempt.
                        await self.write({tp: [record]}, letters=False)
                    except (psycopg.DataError, psycopg.IntegrityError) as refused:
                        await self.dead_letter([(f"PostgreSQL refused it: {refused}", record)])
                        await self.write({tp: [record]}, skip_rows=True)

    async def dead_letter(self, rejected: list[tuple[str, ConsumerRecord[bytes, bytes]]]) -> None:
        sends = [
            await self.producer.send(
                self.topics.dead_letter,
                encode(dead_letter(SOURCE, reason, record.value or b"", record)),
            )
            for reason, record in rejected
        ]
        await asyncio.gather(*sends)

    async def write(self, batch: Batch, *, skip_rows: bool = False, letters: bool = True) -> None:
        """Write the batch's rows and its end offsets in one transaction (only the offsets
        with ``skip_rows``), dead-lettering undecodable records first unless ``letters`` is
        off. Raises ``Fenced`` if another member wrote past it."""
        decoded = Decoded() if skip_rows else self.decode(batch)
        if letters and decoded.rejected:
            await self.dead_letter(decoded.rejected)
        async with self.conn.transaction(), self.conn.cursor() as cur:
            for tp, records in batch.items():
                if not records:
                    continue
                await cur.execute(
                    ADVANCE_OFFSET,
                    {
                        "group": self.group,
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "first": records[0].offset,
                        "next": records[-1].offset + 1,
                    },
                )
                if cur.rowcount != 1:
                    raise Fenced(f"{tp} was written past offset {records[0].offset}")
            if decoded.readings:
                async with cur.copy(COPY_READINGS) as copy:
                    copy.set_types(list(READING_TYPES))
                    for row in decoded.readings:
                        await copy.write_row(row)
            if decoded.transitions:
                params = [alert_params(t) for t in decoded.transitions]
                await cur.executemany(INSERT_TRANSITION, params)
                # One statement per transition, in order: each must see the one before it.
                for p in params:
                    await cur.execute(UPSERT_ALERT, p)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the writer until ``stop`` is set."""
    await wait_for_broker(settings.kafka)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.db.url.get_secret_value(), autocommit=True
        ) as conn:
            topics = settings.kafka.topics
            await run_consumer(
                settings.kafka,
                group_id=settings.writer.consumer_group,
                topics=[topics.readings, topics.alerts],
                handler=WriterHandler(settings, conn, producer),
                stop=stop,
            )
    finally:
        await producer.stop()
