"""PostgreSQL restarts under a flowing stream: the writer pauses, backs off, resumes, and
every reading is stored exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from schemas.readings import SensorReading
from services.config import DatabaseSettings, KafkaSettings
from services.db import migrate
from services.kafka import ensure_topics, make_producer
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from tests.integration.conftest import eventually, frame_of, spawn, stack_env

pytestmark = pytest.mark.integration

PER_WAVE = 2_000


def produce(kafka: KafkaSettings, first: int, count: int) -> None:
    t0 = datetime(2026, 8, 1, tzinfo=UTC)

    async def go() -> None:
        producer = make_producer(kafka)
        await producer.start()
        try:
            sends = []
            for i in range(first, first + count):
                reading = SensorReading(
                    device_id=f"wl-{i % 50}",
                    metric="waterlogging_depth",
                    value=float(i % 40),
                    unit="cm",
                    ts=t0 + timedelta(seconds=i),
                )
                sends.append(
                    await producer.send(kafka.topics.readings, frame_of(reading), key=reading.key)
                )
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    asyncio.run(go())


def counts(url: str) -> tuple[int, int]:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT (reading_id, device_id, metric, ts)) FROM readings"
            ).fetchone()
    except psycopg.OperationalError:
        return (-1, -1)
    assert row is not None
    return (row[0], row[1])


def test_writer_rides_out_a_postgresql_restart(broker: LocalBroker, workdir: Path) -> None:
    # Its own server: restarting the shared one would disturb the other tests.
    pg = LocalPostgres(workdir / "outage-pg", free_port(), workdir / "outage-postgres.log")
    pg.init()
    pg.start()
    try:
        url = pg.create_database("city_vitals")
        migrate(DatabaseSettings(url=SecretStr(url)))
        prefix = f"t{uuid.uuid4().hex[:8]}"
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=3)
        asyncio.run(ensure_topics(kafka))
        env = stack_env(broker.bootstrap, url, prefix)
        log = workdir / f"{prefix}-writer.log"
        writer = spawn("writer", env, log)
        try:
            produce(kafka, 0, PER_WAVE)
            eventually(lambda: counts(url) == (PER_WAVE, PER_WAVE), timeout=60)

            pg.stop()
            produce(kafka, PER_WAVE, PER_WAVE)  # accepted by Kafka while the database is away
            time.sleep(3)  # long enough for the writer to fail and back off at least once
            assert writer.poll() is None, "the writer must pause, not exit"
            pg.start()
            produce(kafka, 2 * PER_WAVE, PER_WAVE)

            total = 3 * PER_WAVE
            eventually(lambda: counts(url) == (total, total), timeout=90)
            assert writer.poll() is None
            text = log.read_text(errors="replace")
            assert "pausing consumption" in text
            assert "resumed consumption" in text
        finally:
            writer.terminate()
            writer.wait(30)
    finally:
        pg.stop()
