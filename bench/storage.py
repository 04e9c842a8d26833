"""Storage figures: the writer's load rate beside a raw binary COPY of the same rows, and
history query latency over a month of data.

    python -m bench.storage [--rows 300000] [--days 30] [--scopes 1000] [--interval-minutes 5]

It starts its own broker and PostgreSQL in a temporary directory. Four load figures, each
into an empty ``readings`` table of its own database, from the same readings:
  raw COPY     rows already built in Python, written with binary COPY (the reference), with
               the CPU PostgreSQL spent a row;
  writer core  the writer's batch path on records already in memory: decode, validate, COPY,
               offsets in the same transaction;
  writer       the writer process's consumer loop from the broker until every row is stored.
Then it loads ``--days`` of readings for ``--scopes`` devices (plus their districts), refreshes
the rollups, and times the history API's queries (p50/p99 over repeated random scopes).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg
from aiokafka import ConsumerRecord, TopicPartition
from pydantic import SecretStr

from bench.scratch import scratch
from ingest.batch import frames, sort_items
from schemas.readings import FRAME_READINGS, Location, SensorReading, read_frame
from services.config import DatabaseSettings, KafkaSettings, Settings, WriterSettings
from services.db import migrate
from services.kafka import ensure_topics, make_producer
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from services.local.processes import free_port, stop_process, wait_for_port
from services.storage.frames import READING_TYPES, frame_rows, pg_time
from services.storage.scheduled import maintain
from services.storage.writer import READING_COLUMNS, WriterHandler

DISTRICTS = ["yuexiu", "liwan", "haizhu", "tianhe", "baiyun", "huangpu", "panyu", "huadu",
             "nansha", "conghua", "zengcheng"]  # fmt: skip


def readings(count: int, t0: datetime) -> list[SensorReading]:
    return [
        SensorReading(
            device_id=f"wl-{i % 1000}",
            metric="waterlogging_depth",
            value=float(i % 60),
            unit="cm",
            ts=t0 + timedelta(milliseconds=i),
            location=Location(district=DISTRICTS[i % 11], grid=f"g-{i % 1000 // 10}"),
        )
        for i in range(count)
    ]


def raw_copy(url: str, rows: list[tuple[object, ...]]) -> tuple[float, float]:
    """Rows/s of a bare binary COPY of prebuilt rows, and the CPU its PostgreSQL backend
    spent a row (microseconds, user and system)."""
    columns = ", ".join(READING_COLUMNS)
    with psycopg.connect(url) as conn:
        cur = conn.cursor()
        backend = psutil.Process(conn.info.backend_pid)
        cpu = sum(backend.cpu_times()[:2])
        began = time.perf_counter()
        with cur.copy(f"COPY readings ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(READING_TYPES))
            for row in rows:
                copy.write_row(row)
        conn.commit()
        took = time.perf_counter() - began
        return len(rows) / took, (sum(backend.cpu_times()[:2]) - cpu) / len(rows) * 1e6


def writer_core(settings: Settings, values: list[bytes], batch: int, rows: int) -> float:
    """Rows/s of the writer's batch path (decode, validate, COPY, offsets) on in-memory frames
    holding ``rows`` readings, ``batch`` records a batch."""
    topic = settings.kafka.topics.readings
    tp = TopicPartition(topic, 0)
    records = [
        ConsumerRecord(topic, 0, i, 1_782_000_000_000, 0, None, v, None, 0, len(v), ())
        for i, v in enumerate(values)
    ]

    async def go() -> float:
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            handler = WriterHandler(settings, None, producer)
            began = time.perf_counter()
            step = max(1, batch // FRAME_READINGS)
            for start in range(0, len(records), step):
                await handler.handle({tp: records[start : start + step]})
            rate = rows / (time.perf_counter() - began)
            if handler.conn is not None:
                await handler.conn.close()
            return rate
        finally:
            await producer.stop()

    return asyncio.run(go())


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


def writer_process(
    settings: Settings, values: list[bytes], rows: int, logs: Path, writers: int = 1
) -> float:
    """Rows/s of ``writers`` writer processes (one consumer group) consuming frames holding
    ``rows`` readings from the broker, from the first row stored to the last (process start-up
    and the group join are not counted)."""
    import os
    import subprocess
    import sys

    async def fill() -> None:
        await ensure_topics(settings.kafka)
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            sends = [
                await producer.send(settings.kafka.topics.readings, v, key=str(i % 1000).encode())
                for i, v in enumerate(values)
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    asyncio.run(fill())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
    env.update(
        CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        CITY_VITALS_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        CITY_VITALS_DB__URL=settings.db.url.get_secret_value(),
        CITY_VITALS_WRITER__CONSUMER_GROUP=settings.writer.consumer_group,
    )
    url = settings.db.url.get_secret_value()
    with (logs / "writer.log").open("ab") as out:
        began = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", "writer", "--no-migrate"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            for _ in range(writers)
        ]
        try:
            first: tuple[float, int] | None = None
            while (stored := count(url)) < rows:
                if first is None and stored:
                    first = (time.perf_counter(), stored)
                if time.perf_counter() - began > 600:
                    raise TimeoutError("the writer did not store every row within 10 minutes")
                time.sleep(0.05)
            if first is None:
                raise RuntimeError("every row arrived in one batch: use more --rows")
            return (rows - first[1]) / (time.perf_counter() - first[0])
        finally:
            for proc in procs:
                stop_process(proc, timeout=30)


def load_history(url: str, days: int, scopes: int, interval: timedelta) -> int:
    """A month of readings for ``scopes`` devices, by COPY (not timed)."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    steps = int((end - start) / interval)
    rng = random.Random(7)
    columns = ", ".join(READING_COLUMNS)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY readings ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(READING_TYPES))
            for step in range(steps):
                ts = start + step * interval
                for d in range(scopes):
                    copy.write_row(
                        (pg_time(ts), uuid.uuid4().bytes, f"wl-{d}", "waterlogging_depth",
                         rng.random() * 40, "cm", f"g-{d // 10}", None, DISTRICTS[d % 11], None,
                         None, pg_time(ts))
                    )  # fmt: skip
        conn.commit()
    return steps * scopes


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"


def time_queries(api: str, scopes: int, repeats: int) -> dict[str, list[float]]:
    now = datetime.now(UTC)
    rng = random.Random(11)
    month = (now - timedelta(days=30)).isoformat()
    queries: dict[str, Callable[[], dict[str, object]]] = {
        "device series, 30 days in 1 h buckets": lambda: {
            "indicator": "water.waterlogging_depth", "scope_id": f"wl-{rng.randrange(scopes)}",
            "start": month, "end": now.isoformat(), "bucket": "1h"},
        "device series, 1 day in 5 min buckets": lambda: {
            "indicator": "water.waterlogging_depth", "scope_id": f"wl-{rng.randrange(scopes)}",
            "start": (now - timedelta(days=1)).isoformat(), "end": now.isoformat(),
            "bucket": "5m", "aggregation": "max"},
        "device series, 30 days in 1 day buckets": lambda: {
            "indicator": "water.waterlogging_depth", "scope_id": f"wl-{rng.randrange(scopes)}",
            "start": month, "end": now.isoformat(), "bucket": "1d", "aggregation": "max"},
    }  # fmt: skip
    out: dict[str, list[float]] = {}
    with httpx.Client(timeout=60) as client:
        for name, params in queries.items():
            samples = []
            for _ in range(repeats):
                began = time.perf_counter()
                response = client.get(f"{api}/api/v1/history/series", params=params())  # type: ignore[arg-type]
                samples.append(time.perf_counter() - began)
                response.raise_for_status()
            out[name] = samples
        samples = []
        for _ in range(repeats):
            began = time.perf_counter()
            response = client.get(
                f"{api}/api/v1/history/latest",
                params={"indicator": ["water.waterlogging_depth"], "limit": 1000},
            )
            samples.append(time.perf_counter() - began)
            response.raise_for_status()
        out["latest value of 1,000 device scopes"] = samples
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="Rows for the load figures.")
    parser.add_argument("--batch", type=int, default=5_000, help="Readings per writer batch.")
    parser.add_argument(
        "--writers", type=int, default=2, help="Writer processes from the broker (deploy/: 2)."
    )
    parser.add_argument("--no-history", action="store_true", help="Load figures only.")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--scopes", type=int, default=1000)
    parser.add_argument("--interval-minutes", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    work = scratch("bench")
    pg = LocalPostgres(work / "pg", free_port(), work / "postgres.log")
    broker = LocalBroker(free_port(), work / "broker.log")
    pg.init()
    pg.start()
    broker.start()
    try:
        databases = {}
        for name in ("raw", "core", "writer", "history"):
            databases[name] = pg.create_database(name)
            migrate(DatabaseSettings(url=SecretStr(databases[name])))

        t0 = datetime(2026, 6, 1, tzinfo=UTC)
        models = readings(args.rows, t0)
        # As ingest puts them on the topic: frames of FRAME_READINGS.
        values = frames(sort_items([m.model_dump(mode="json") for m in models]).accepted)
        rows = [row for v in values for row in frame_rows(read_frame(v), pg_time(t0))]

        def settings(db: str, prefix: str) -> Settings:
            return Settings(
                db=DatabaseSettings(url=SecretStr(databases[db])),
                kafka=KafkaSettings(
                    bootstrap_servers=broker.bootstrap, topic_prefix=prefix,
                    max_batch_records=args.batch,
                ),
                writer=WriterSettings(consumer_group=f"{prefix}-writer"),
            )  # fmt: skip

        print(f"load: {args.rows:,} readings, batches of {args.batch:,}")
        raw, cpu = raw_copy(databases["raw"], rows)
        print(
            f"  raw binary COPY      {raw:>12,.0f} rows/s   (reference); "
            f"PostgreSQL {cpu:.1f} us CPU a row"
        )
        core = writer_core(settings("core", "bench-core"), values, args.batch, len(rows))
        print(f"  writer core          {core:>12,.0f} rows/s   {core / raw:5.2f} x raw")
        proc = writer_process(
            settings("writer", f"bench{uuid.uuid4().hex[:6]}"),
            values,
            len(rows),
            work,
            args.writers,
        )
        print(
            f"  writer from broker   {proc:>12,.0f} rows/s   {proc / raw:5.2f} x raw"
            f"   ({args.writers} writer processes, one group)"
        )
        if args.no_history:
            return

        interval = timedelta(minutes=args.interval_minutes)
        history = databases["history"]
        began = time.perf_counter()
        loaded = load_history(history, args.days, args.scopes, interval)
        took = time.perf_counter() - began
        print(
            f"history: {loaded:,} readings ({args.days} days x {args.scopes:,} devices every "
            f"{args.interval_minutes:g} min) loaded in {took:.1f} s"
        )
        began = time.perf_counter()

        async def refresh() -> None:
            async with await psycopg.AsyncConnection.connect(history, autocommit=True) as conn:
                await maintain(conn, Settings().storage, now=datetime.now(UTC))

        asyncio.run(refresh())
        print(f"  rollups refreshed in {time.perf_counter() - began:.1f} s")
        with psycopg.connect(history, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

        import os
        import subprocess
        import sys

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITY_VITALS_")}
        env.update(CITY_VITALS_DB__URL=history, CITY_VITALS_API__PORT=str(port))
        with (work / "api.log").open("ab") as out:
            api = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "api"], env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for_port("127.0.0.1", port, timeout=60, what="api", log=work / "api.log")
            for name, samples in time_queries(
                f"http://127.0.0.1:{port}", args.scopes, args.repeats
            ).items():
                print(f"  {name:<42} {percentiles(samples)}")
        finally:
            stop_process(api, timeout=30)
    finally:
        broker.stop()
        pg.stop()


if __name__ == "__main__":
    main()
