"""The rules engine on a real broker and PostgreSQL: killed with SIGKILL at random points while
a stream flows, and split over two processes in one consumer group, it emits exactly the
transitions (and indicator values) one uninterrupted pass of the pure engine computes from the
same partition logs."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bench.kafkalog import end_offsets, expected, read_log, saved_offsets, tick_all
from schemas.alerts import AlertTransition, ScopeLevel
from schemas.indicator_values import IndicatorValue
from services.config import KafkaSettings
from services.kafka import ensure_topics
from services.local.broker import LocalBroker
from services.local.postgres import LocalPostgres
from tests.integration.conftest import eventually, frame_of, fresh_database, spawn, stack_env

pytestmark = pytest.mark.integration

PARTITIONS = 3
START = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
MINUTES = 150


def stream(seed: int) -> list[tuple[str, bytes]]:
    """Waterlogging gauges (device scope) and congestion sensors (district mean), one reading
    a minute with storms, gaps, and a little disorder: (device, record) in send order."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    gauges = [(f"wl-{i:02d}", f"d{i % 3}") for i in range(12)]
    sensors = [(f"tc-{i:02d}", f"d{i % 3}") for i in range(9)]
    phase = {d: rng.uniform(0, 6) for d, _ in gauges + sensors}
    for minute in range(MINUTES):
        for device, district in gauges + sensors:
            if minute > 20 and rng.random() < 0.08:
                continue  # a missed report; whole quiet spells make no-data alerts
            if device == "wl-05" and 60 <= minute < 75:
                continue
            ts = START + timedelta(minutes=minute, seconds=rng.uniform(0, 59))
            wave = (1 + math.sin(minute / 11 + phase[device])) / 2
            if device.startswith("wl"):
                metric, unit, value = "waterlogging_depth", "cm", wave * 60 + rng.gauss(0, 3)
            else:
                metric, unit, value = "congestion_index", "TPI", wave * 10 + rng.gauss(0, 0.5)
            record = {
                "device_id": device,
                "metric": metric,
                "value": round(max(value, 0.0), 2),
                "unit": unit,
                "ts": ts.isoformat(),
                "location": {"district": district, "street": f"{district}-s1"},
            }
            out.append((device, frame_of(record)))
    return out


async def produce(
    kafka: KafkaSettings, records: list[tuple[str, bytes]], per_second: float | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for n, (device, value) in enumerate(records):
            await producer.send(kafka.topics.readings, value, key=device.encode())
            if per_second is not None and n % 10 == 9:
                await asyncio.sleep(10 / per_second)
        await producer.flush()
    finally:
        await producer.stop()


class Engines:
    """Rules engine processes against one topic namespace and database."""

    def __init__(self, broker: LocalBroker, db_url: str, logs: Path) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.group = f"{self.prefix}-rules"
        self.db_url = db_url
        self.logs = logs
        self.kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap, topic_prefix=self.prefix, partitions=PARTITIONS
        )
        self.env = stack_env(
            broker.bootstrap,
            db_url,
            self.prefix,
            # The test writes its own ticks at the end: the logs must not depend on wall time.
            CITY_VITALS_RULES__TICK_SECONDS="100000",
            CITY_VITALS_RULES__COMMIT_SECONDS="0.3",
            CITY_VITALS_KAFKA__MAX_BATCH_RECORDS="200",
            # A killed member's partitions move on after this, not the default 10 s.
            CITY_VITALS_KAFKA__SESSION_TIMEOUT_MS="4000",
        )
        self.started = 0

    def start(self) -> object:
        self.started += 1
        return spawn("rules", self.env, self.logs / f"rules-{self.started}.log")

    def log(self, n: int) -> str:
        return (self.logs / f"rules-{n}.log").read_text(encoding="utf-8", errors="replace")

    def caught_up(self) -> bool:
        topics = [self.kafka.topics.readings, self.kafka.topics.rollup]
        ends = asyncio.run(end_offsets(self.kafka, topics))
        saved = saved_offsets(self.db_url, self.group)
        return all(saved.get(key, 0) >= end for key, end in ends.items())

    def emitted(self) -> tuple[dict[object, AlertTransition], dict[object, IndicatorValue]]:
        """What reached the output topics, by id; a re-emitted id must carry the same record."""
        transitions: dict[object, AlertTransition] = {}
        for records in asyncio.run(read_log(self.kafka, self.kafka.topics.alerts)).values():
            for raw, _ in records:
                t = AlertTransition.model_validate_json(raw)
                assert transitions.setdefault(t.transition_id, t) == t
        values: dict[object, IndicatorValue] = {}
        for records in asyncio.run(
            read_log(self.kafka, self.kafka.topics.indicator_values)
        ).values():
            for raw, _ in records:
                v = IndicatorValue.model_validate_json(raw)
                assert values.setdefault(v.value_id, v) == v
        return transitions, values

    def reference(self) -> tuple[dict[object, AlertTransition], dict[object, IndicatorValue]]:
        """One uninterrupted pass of the pure engine over the same partition logs."""
        return asyncio.run(expected(self.kafka))


@pytest.fixture
def engines(broker: LocalBroker, postgres: LocalPostgres, workdir: Path) -> Engines:
    logs = workdir / f"crash-{uuid.uuid4().hex[:6]}"
    logs.mkdir()
    made = Engines(broker, fresh_database(postgres), logs)
    asyncio.run(ensure_topics(made.kafka))
    return made


def stop(process: object) -> None:
    process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    process.wait(timeout=60)  # type: ignore[attr-defined]


def check_against_reference(engines: Engines) -> dict[object, AlertTransition]:
    got_transitions, got_values = engines.emitted()
    want_transitions, want_values = engines.reference()
    assert got_transitions == want_transitions
    assert got_values == want_values
    scopes = {t.scope_level for t in want_transitions.values()}
    assert {ScopeLevel.DEVICE, ScopeLevel.DISTRICT} <= scopes, scopes
    return want_transitions


def test_sigkill_at_random_points_neither_loses_nor_duplicates(engines: Engines) -> None:
    records = stream(seed=11)
    rng = random.Random(5)
    # The stream flows all along, about 25 records a second, while engines come and go.
    feeder = threading.Thread(
        target=lambda: asyncio.run(produce(engines.kafka, records, per_second=25)), daemon=True
    )
    feeder.start()
    kills = 0
    while kills < 6 and feeder.is_alive():
        engine = engines.start()
        before = sum(saved_offsets(engines.db_url, engines.group).values())

        # Kill it at a random moment once it has saved work of its own.
        def progressed(before: int = before) -> bool:
            return sum(saved_offsets(engines.db_url, engines.group).values()) > before

        eventually(progressed, timeout=90)
        time.sleep(rng.uniform(0.0, 1.5))
        engine.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        engine.wait(timeout=30)  # type: ignore[attr-defined]
        kills += 1
    assert feeder.is_alive(), "the stream ended before the engine was killed 6 times"
    engine = engines.start()
    feeder.join(timeout=300)
    asyncio.run(tick_all(engines.kafka, START + timedelta(minutes=MINUTES + 60)))
    eventually(engines.caught_up, timeout=180, interval=1.0)
    stop(engine)
    transitions = check_against_reference(engines)
    assert len(transitions) > 30
    print(f"{kills} SIGKILLs mid-stream; {len(transitions)} transitions identical")


def test_two_engines_in_one_group_emit_what_one_would(engines: Engines) -> None:
    first, second = engines.start(), engines.start()
    try:
        asyncio.run(produce(engines.kafka, stream(seed=23)))
        asyncio.run(tick_all(engines.kafka, START + timedelta(minutes=MINUTES + 60)))
        eventually(engines.caught_up, timeout=180, interval=1.0)
    finally:
        stop(first)
        stop(second)
    for n in (1, 2):
        marker = "engine tasks restored: "
        owned = [line.split(marker)[1] for line in engines.log(n).splitlines() if marker in line]
        assert any(part.strip() for part in owned), f"engine {n} never owned a partition"
    check_against_reference(engines)


def test_a_quiet_engine_saves_what_its_ticks_moved(engines: Engines) -> None:
    """Ticks dirty every task of a quiet engine every second; the saves between batches must
    keep up, or the engine looks behind for ever (each save is a replay it would not need)."""
    engines.env["CITY_VITALS_RULES__TICK_SECONDS"] = "1"
    engine = engines.start()
    try:
        asyncio.run(produce(engines.kafka, stream(seed=3)[:300]))
        time.sleep(3)  # quiet: the ticks flow
        eventually(engines.caught_up, timeout=60, interval=0.2)
    finally:
        stop(engine)
