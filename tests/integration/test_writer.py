"""The writer against real PostgreSQL: exactly-once batches, and fencing of a stale member."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from pydantic import SecretStr

from schemas.alerts import AlertTransition, Level, ScopeLevel, TransitionKind
from schemas.deadletter import DeadLetter
from schemas.indicator_values import IndicatorValue, value_id_for
from schemas.readings import SensorReading
from schemas.topics import Topics
from services.config import DatabaseSettings, Settings, WriterSettings
from services.kafka import (
    Batch,
    Fenced,
    Unavailable,
    dead_letter,
    encode,
    ensure_topics,
    make_producer,
)
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.storage.writer import WriterHandler
from tests.integration.conftest import frame_of, fresh_database, read_topic

pytestmark = pytest.mark.integration

TOPIC = Topics().readings


def records(
    first: int, count: int, partition: int = 0, topic: str = TOPIC, fixed: float | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    out = []
    for offset in range(first, first + count):
        reading = SensorReading(
            device_id=f"d{partition}",
            metric="aqi",
            value=offset if fixed is None else fixed,
            unit="AQI",
            ts=t0 + timedelta(seconds=offset),
        )
        value = frame_of(reading)
        out.append(
            ConsumerRecord(
                topic, partition, offset, 1_782_000_000_000, 0, None, value, None, 0, len(value), ()
            )
        )
    return out


def stored(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (reading_id, device_id, metric, ts)) FROM readings"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def writer_settings(
    url: str, broker: LocalBroker, group: str, *, own_topics: bool = False
) -> Settings:
    """A writer on the test broker writing to ``url``; on the platform's topics (``TOPIC``), or
    with ``own_topics`` on topics no other test touches."""
    kafka = Settings().kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
    if own_topics:
        kafka = kafka.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}"})
    return Settings(
        db=DatabaseSettings(url=SecretStr(url)),
        kafka=kafka,
        writer=WriterSettings(consumer_group=group),
    )


def test_a_stale_member_is_fenced_and_writes_nothing(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "fence-test")
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)

    async def scenario() -> None:
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            async with (
                await psycopg.AsyncConnection.connect(url, autocommit=True) as a_conn,
                await psycopg.AsyncConnection.connect(url, autocommit=True) as b_conn,
            ):
                a = WriterHandler(settings, a_conn, producer)
                b = WriterHandler(settings, b_conn, producer)
                first: Batch = {tp0: records(0, 100), tp1: records(0, 50, partition=1)}

                # A owns both partitions and writes its batch.
                await a.handle(first)
                assert stored(url) == (150, 150)
                assert await b.assigned({tp0, tp1}) == {tp0: 100, tp1: 50}

                # A rebalance hands partition 0 to B, which resumes from the stored offset...
                await b.handle({tp0: records(100, 20)})
                # ...while A, not yet aware, writes what it had fetched before: fenced, and
                # nothing of its batch is kept, not even partition 1's part.
                with pytest.raises(Fenced):
                    await a.handle({tp0: records(100, 30), tp1: records(50, 10, partition=1)})
                assert stored(url) == (170, 170)
                assert await a.assigned({tp0, tp1}) == {tp0: 120, tp1: 50}

                # Redelivery of an already written batch is fenced too: stored once.
                with pytest.raises(Fenced):
                    await b.handle({tp0: records(100, 20)})
                assert stored(url) == (170, 170)
        finally:
            await producer.stop()

    asyncio.run(scenario())


def test_a_record_postgresql_refuses_is_dead_lettered_and_the_rest_stored(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    url = fresh_database(postgres)
    with psycopg.connect(url, autocommit=True) as conn:
        # Stands in for any value the contracts accept but the database will not store.
        conn.execute("ALTER TABLE readings ADD CONSTRAINT refuse_666 CHECK (value <> 666)")
    settings = writer_settings(url, broker, "refuse-test", own_topics=True)
    topic = settings.kafka.topics.readings
    garbage = records(10, 1, topic=topic)[0]
    garbage.value = b"not a reading"
    batch: Batch = {
        TopicPartition(topic, 0): [
            *records(0, 5, topic=topic),
            *records(5, 1, topic=topic, fixed=666),
            *records(6, 4, topic=topic),
            garbage,
        ]
    }

    async def scenario() -> None:
        await ensure_topics(settings.kafka)
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                writer = WriterHandler(settings, conn, producer)
                await writer.handle(batch)
                assert await writer.assigned(set(batch)) == {TopicPartition(topic, 0): 11}
        finally:
            await producer.stop()

    asyncio.run(scenario())
    assert stored(url) == (9, 9)
    # Each refused record dead-lettered once: the one PostgreSQL refused, the undecodable one.
    letters = sorted(
        (
            DeadLetter.model_validate_json(v)
            for v in read_topic(
                settings.kafka, settings.kafka.topics.dead_letter, at_least=3, timeout=5
            )
        ),
        key=lambda d: d.offset or 0,
    )
    assert [(d.source, d.offset) for d in letters] == [("writer", 5), ("writer", 10)]
    assert "refuse_666" in letters[0].reason


def water_alert(scope_id: str, start: datetime) -> list[AlertTransition]:
    """One alert's life: firing blue, then red, then resolved."""
    alert = uuid.uuid5(uuid.NAMESPACE_URL, scope_id)
    return [
        AlertTransition(
            transition_id=uuid.uuid5(alert, str(seq)),
            alert_id=alert,
            seq=seq,
            kind=kind,
            indicator="water.depth",
            scope_level=ScopeLevel.DEVICE,
            scope_id=scope_id,
            level=level,
            previous_level=previous,
            value=float(seq),
            threshold=10.0,
            occurrences=seq,
            opened_at=start,
            observed_at=start + timedelta(minutes=seq),
        )
        for seq, kind, level, previous in (
            (1, TransitionKind.FIRING, Level.BLUE, None),
            (2, TransitionKind.LEVEL_CHANGED, Level.RED, Level.BLUE),
            (3, TransitionKind.RESOLVED, None, Level.RED),
        )
    ]


def as_records(
    topic: str, first: int, models: list[Any], partition: int = 0
) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(
            topic, partition, first + i, 1_782_000_000_000, 0, None, encode(m), None, 0, 0, ()
        )
        for i, m in enumerate(models)
    ]


def write_batches(settings: Settings, *batches: Batch) -> None:
    """Hand ``batches`` to one writer, in order."""

    async def scenario() -> None:
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            writer = WriterHandler(settings, None, producer)
            for batch in batches:
                await writer.handle(batch)
            assert writer.conn is not None
            await writer.conn.close()
        finally:
            await producer.stop()

    asyncio.run(scenario())


def test_values_and_transitions_re_emitted_under_new_offsets_are_stored_once(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    """A restarted rules engine re-emits what it had sent before its last commit: the same
    deterministic ids at later offsets. The writer keeps one row of each."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "replay-test", own_topics=True)
    topics = settings.kafka.topics
    start = datetime(2026, 7, 1, tzinfo=UTC)
    values = [
        IndicatorValue(
            value_id=value_id_for(
                "water.depth", ScopeLevel.DEVICE, "wl-1", start + timedelta(minutes=i)
            ),
            indicator="water.depth",
            scope_level=ScopeLevel.DEVICE,
            scope_id="wl-1",
            window_start=start + timedelta(minutes=i),
            window_end=start + timedelta(minutes=i + 1),
            value=float(i),
            samples=2,
            level=Level.BLUE if i else None,
        )
        for i in range(3)
    ]
    transitions = water_alert("wl-1", start)

    vtp, atp = TopicPartition(topics.indicator_values, 0), TopicPartition(topics.alerts, 0)

    write_batches(
        settings,
        {vtp: as_records(vtp.topic, 0, values[:2]), atp: as_records(atp.topic, 0, transitions[:2])},
        # The replay: everything again, plus what is new, at later offsets.
        {vtp: as_records(vtp.topic, 2, values), atp: as_records(atp.topic, 2, transitions)},
    )
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT value_id) FROM indicator_values"
        ).fetchone() == (3, 3)
        assert conn.execute(
            "SELECT count(*), count(DISTINCT transition_id) FROM alert_transitions"
        ).fetchone() == (3, 3)
        assert conn.execute("SELECT status, peak_level, last_seq FROM alerts").fetchall() == [
            ("resolved", "red", 3)
        ]


def test_stored_readings_mark_their_minute_buckets_for_the_rollups(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "marks-test")

    async def scenario() -> None:
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                writer = WriterHandler(settings, conn, producer)
                # 00:00:00 to 00:02:09 on 2026-07-01: three minute buckets.
                await writer.handle({TopicPartition(TOPIC, 0): records(0, 130)})
        finally:
            await producer.stop()

    asyncio.run(scenario())
    with psycopg.connect(url) as conn:
        layout = conn.execute("SELECT layout FROM storage_layout").fetchone()
        marks = conn.execute("SELECT rollup, bucket FROM rollup_dirty ORDER BY bucket").fetchall()
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    if layout == ("timescaledb",):
        assert marks == []  # continuous aggregates track their own changes
    else:
        assert marks == [("readings_1m", t0 + timedelta(minutes=m)) for m in range(3)]


def test_alert_batches_are_fenced_and_stored_once(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    """The alerts role writes a batch as one pipeline: a stale member is still fenced and
    keeps nothing, a re-emitted transition is stored once, and each alert ends at its last."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "alerts-fence-test")
    topic = settings.kafka.topics.alerts
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    start = datetime(2026, 7, 1, tzinfo=UTC)
    one, two = water_alert("wl-1", start), water_alert("wl-2", start)

    def transitions_of(scope_id: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM alert_transitions WHERE scope_id = %s", (scope_id,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    async def scenario() -> None:
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            a = WriterHandler(settings, None, producer)
            b = WriterHandler(settings, None, producer)
            await a.handle(
                {tp0: as_records(topic, 0, one[:2]), tp1: as_records(topic, 0, two[:1], 1)}
            )
            # B now owns partition 0; a restarted engine re-emitted the first two, then the third.
            assert await b.assigned({tp0}) == {tp0: 2}
            await b.handle({tp0: as_records(topic, 2, one)})
            with pytest.raises(Fenced):
                await a.handle(
                    {tp0: as_records(topic, 2, one[2:]), tp1: as_records(topic, 1, two[1:], 1)}
                )
            assert transitions_of("wl-2") == 1, "part of a fenced batch was kept"
            assert await b.assigned({tp1}) == {tp1: 1}  # and then partition 1
            await b.handle({tp1: as_records(topic, 1, two[1:], 1)})
            assert await a.assigned({tp0, tp1}) == {tp0: 5, tp1: 3}
            for handler in (a, b):
                if handler.conn is not None:
                    await handler.conn.close()
        finally:
            await producer.stop()

    asyncio.run(scenario())
    assert transitions_of("wl-1") == transitions_of("wl-2") == 3
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT scope_id, status, peak_level, occurrences, last_seq FROM alerts ORDER BY 1"
        ).fetchall() == [("wl-1", "resolved", "red", 3, 3), ("wl-2", "resolved", "red", 3, 3)]


def test_an_alert_transition_with_a_non_finite_number_is_dead_lettered_not_altered(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    """NaN and infinity have no JSON form to store by (pydantic's JSON parser reads them); the
    contract refuses them, so the writer dead-letters the record with the reason instead of
    storing a null, and stores the rest of the batch."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "finite-test", own_topics=True)
    topic = settings.kafka.topics.alerts
    start = datetime(2026, 7, 1, tzinfo=UTC)
    good, bad = water_alert("wl-ok", start)[:1], water_alert("wl-inf", start)[:1]
    records = as_records(topic, 0, good + bad)
    assert records[1].value is not None
    records[1].value = records[1].value.replace(b'"threshold":10.0', b'"threshold":Infinity')

    async def scenario() -> None:
        await ensure_topics(settings.kafka)
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            writer = WriterHandler(settings, None, producer)
            await writer.handle({TopicPartition(topic, 0): records})
            assert await writer.assigned({TopicPartition(topic, 0)}) == {
                TopicPartition(topic, 0): 2
            }
            assert writer.conn is not None
            await writer.conn.close()
        finally:
            await producer.stop()

    asyncio.run(scenario())
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT scope_id FROM alert_transitions").fetchall() == [("wl-ok",)]
    (letter,) = [
        DeadLetter.model_validate_json(v)
        for v in read_topic(
            settings.kafka, settings.kafka.topics.dead_letter, at_least=1, timeout=5
        )
    ]
    assert letter.offset == 1
    assert letter.reason.startswith("threshold: ")
    assert "finite number" in letter.reason


def test_a_dead_letter_sent_twice_is_stored_once(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    """A consumer sends a batch's dead letters before the transaction that stores the batch, so
    a retried batch sends them again: the dead-letter topic holds both, the table one. Letters
    about input that never reached Kafka (ingest's) carry no offset, and each is kept."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "letters-once-test", own_topics=True)
    topic = settings.kafka.topics.dead_letter
    refused = records(7, 1, topic=settings.kafka.topics.readings)[0]
    again = dead_letter("writer", "not a reading", b"x", refused)
    by_ingest = dead_letter("ingest", "not JSON", b"{")
    letters = [again, again.model_copy(update={"received_at": datetime.now(UTC)}), by_ingest]

    write_batches(
        settings,
        {TopicPartition(topic, 0): as_records(topic, 0, letters)},
        {TopicPartition(topic, 0): as_records(topic, 3, [again, by_ingest])},
    )
    with psycopg.connect(url) as conn:
        assert conn.execute(
            'SELECT source, topic, "offset" FROM dead_letters ORDER BY letter_id'
        ).fetchall() == [
            ("writer", settings.kafka.topics.readings, 7),
            ("ingest", None, None),
            ("ingest", None, None),
        ]


@contextlib.asynccontextmanager
async def own_writer(settings: Settings) -> AsyncIterator[WriterHandler]:
    """A writer opening its own connection (as the service's does), closed afterwards."""
    producer = make_producer(settings.kafka)
    await producer.start()
    handler = WriterHandler(settings, None, producer)
    try:
        yield handler
    finally:
        if handler.conn is not None:
            await handler.conn.close()
        await producer.stop()


@pytest.mark.parametrize("synchronous", [False, True])
def test_batches_commit_without_waiting_for_the_disk_unless_asked(
    broker: LocalBroker, postgres: LocalPostgres, synchronous: bool
) -> None:
    """A lost transaction loses its offsets with it, so the writer may be told not to wait
    for the disk (WriterSettings.synchronous_commit); whichever way, the batch is stored once."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, f"commit-{synchronous}")
    settings = settings.model_copy(
        update={"writer": settings.writer.model_copy(update={"synchronous_commit": synchronous})}
    )

    async def scenario() -> str:
        async with own_writer(settings) as handler:
            await handler.handle({TopicPartition(TOPIC, 0): records(0, 20)})
            conn = await handler.connection()
            cur = await conn.execute("SHOW synchronous_commit")
            row = await cur.fetchone()
            assert row is not None
            return str(row[0])

    assert asyncio.run(scenario()) == ("on" if synchronous else "off")
    assert stored(url) == (20, 20)


def test_a_commit_lost_in_a_crash_is_written_again_not_skipped(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    """PostgreSQL may lose the last commits, rows and offsets together (a crash when commits
    do not wait for the disk, a failover to a standby behind). The next batch then finds the
    stored offset behind what the writer stored: it writes nothing (Fenced), and from the
    stored offsets read again the lost batch is written once."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "lost-commit")
    tp = TopicPartition(TOPIC, 0)

    async def scenario() -> None:
        async with own_writer(settings) as handler:
            assert await handler.assigned({tp}) == {}
            await handler.handle({tp: records(0, 10)})
            await handler.handle({tp: records(10, 10)})
            with psycopg.connect(url) as conn:  # the crash: the second commit did not last
                conn.execute(
                    "DELETE FROM readings WHERE ts >= %s",
                    (datetime(2026, 7, 1, 0, 0, 10, tzinfo=UTC),),
                )
                conn.execute("UPDATE consumer_offsets SET next_offset = 10")
            with pytest.raises(Fenced):
                await handler.handle({tp: records(20, 10)})
            assert stored(url) == (10, 10)
            assert await handler.assigned({tp}) == {tp: 10}
            await handler.handle({tp: records(10, 20)})

    asyncio.run(scenario())
    assert stored(url) == (30, 30)


def test_a_closed_connection_is_reported_not_silently_replaced(
    broker: LocalBroker, postgres: LocalPostgres
) -> None:
    """The consumer loop must hear of a lost connection (Unavailable) to go on from the stored
    offsets; the next batch then opens a new one."""
    url = fresh_database(postgres)
    settings = writer_settings(url, broker, "closed-conn")
    tp = TopicPartition(TOPIC, 0)

    async def scenario() -> None:
        async with own_writer(settings) as handler:
            await handler.assigned({tp})
            await handler.handle({tp: records(0, 10)})
            assert handler.conn is not None
            await handler.conn.close()
            with pytest.raises(Unavailable):
                await handler.handle({tp: records(10, 10)})
            await handler.handle({tp: records(10, 10)})

    asyncio.run(scenario())
    assert stored(url) == (20, 20)


def test_undoing_migration_0011_stores_the_derived_ids_again(postgres: LocalPostgres) -> None:
    from alembic import command

    from services.db import alembic_config, migrate
    from services.storage.frames import stored_reading_id

    url = fresh_database(postgres)
    chosen = uuid.uuid4()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO readings (ts, reading_id, device_id, metric, value, unit, ingested_at) "
            "VALUES ('2026-07-01T00:00:00.5Z', NULL, 'd1', 'aqi', 1, 'AQI', now()), "
            "('2026-07-01T00:00:01Z', NULL, 'd1', 'aqi', 2, 'AQI', now()), "
            "('2026-07-01T00:00:02Z', %s, 'd2', 'aqi', 3, 'AQI', now())",
            [chosen],
        )
    command.downgrade(alembic_config(url), "0010")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT reading_id, device_id, metric, ts FROM readings ORDER BY ts"
        ).fetchall()
        required = conn.execute(
            "SELECT attnotnull FROM pg_attribute "
            "WHERE attrelid = 'readings'::regclass AND attname = 'reading_id'"
        ).fetchone()
    assert required == (True,)
    assert [r[0] for r in rows] == [
        stored_reading_id(None, "d1", "aqi", rows[0][3]),
        stored_reading_id(None, "d1", "aqi", rows[1][3]),
        chosen,
    ]
    migrate(DatabaseSettings(url=SecretStr(url)))  # and up again, the ids kept
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(reading_id) FROM readings").fetchone() == (3,)
