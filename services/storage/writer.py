"""The storage writer: readings, indicator values and alert transitions from Kafka into
PostgreSQL, exactly once.

Each batch is written in one transaction together with the Kafka offsets it ends at
(``consumer_offsets``). After a crash the writer resumes from those stored offsets, so a
batch whose rows committed is never written again, and one that did not commit is written
whole. Readings go in by binary COPY straight into their table; indicator values and
tickets through a staging table, so a value re-emitted by a restarted rules engine (same
deterministic id) is stored once. Alert transitions go as one JSON parameter, stored once
each the same way, and each alert is upserted from them in the same statement.

When PostgreSQL is away the writer does not exit: it raises ``Unavailable``, and the consumer
loop pauses, backs off and re-reads the batch once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import orjson
import psycopg
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from schemas.alerts import AlertTransition
from schemas.base import describe_errors
from schemas.deadletter import DeadLetter
from schemas.indicator_values import IndicatorValue
from schemas.readings import FrameError, read_frame
from schemas.tickets import HotlineTicket
from services.config import Settings
from services.kafka import (
    Batch,
    Fenced,
    Unavailable,
    dead_letter,
    encode,
    is_tick,
    make_producer,
    run_consumer,
    wait_for_broker,
)
from services.storage.frames import PG_EPOCH_US, READING_TYPES, frame_rows, minutes_of
from services.storage.layout import Layout, current
from services.storage.scheduled import MARK_CHANGED, maintain, prepare, until_round

log = logging.getLogger(__name__)

Params = dict[str, object]

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
TRANSITION_COLUMNS = (
    "transition_id",
    "alert_id",
    "seq",
    "kind",
    "condition",
    "indicator",
    "scope_level",
    "scope_id",
    "level",
    "previous_level",
    "value",
    "threshold",
    "occurrences",
    "opened_at",
    "observed_at",
    "reading_id",
)
LETTER_COLUMNS = (
    "source",
    "reason",
    "payload",
    "truncated",
    "received_at",
    "topic",
    "partition",
    '"offset"',
)
LETTER_TYPES = ("text", "text", "text", "bool", "timestamptz", "text", "int4", "int8")

VALUE_COLUMNS = (
    "indicator",
    "scope_level",
    "scope_id",
    "window_start",
    "window_end",
    "value",
    "samples",
    "level",
    "value_id",
)
VALUE_TYPES = (
    "text",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "float8",
    "int4",
    "text",
    "uuid",
)

TICKET_COLUMNS = (
    "ticket_id",
    "category",
    "description",
    "reported_at",
    "urgent",
    "address",
    "lon",
    "lat",
    "grid",
    "street",
    "district",
    "media_url",
    "channel",
    "external_id",
)
TICKET_TYPES = (
    "uuid",
    "text",
    "text",
    "timestamptz",
    "bool",
    "text",
    "float8",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
)
CALLER_COLUMNS = ("ticket_id", "name", "phone")
CALLER_TYPES = ("uuid", "text", "text")

# Staging tables live per connection and empty themselves at commit. The unique keys of the
# real tables (whatever the layout) make a re-emitted row a no-op.
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_values
    (LIKE indicator_values INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staging_tickets
    (LIKE tickets INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staging_callers (LIKE ticket_callers) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staging_letters
    (LIKE dead_letters INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
"""
MOVE_TICKETS = f"""
INSERT INTO tickets ({", ".join(TICKET_COLUMNS)})
SELECT {", ".join(TICKET_COLUMNS)} FROM staging_tickets
ON CONFLICT DO NOTHING;
INSERT INTO ticket_callers ({", ".join(CALLER_COLUMNS)})
SELECT {", ".join(CALLER_COLUMNS)} FROM staging_callers
ON CONFLICT DO NOTHING
"""
# One letter per consumer and record it refused: a retried batch sends its letters again.
MOVE_LETTERS = f"""
INSERT INTO dead_letters ({", ".join(LETTER_COLUMNS)})
SELECT {", ".join(LETTER_COLUMNS)} FROM staging_letters
ON CONFLICT DO NOTHING
"""
MOVE_VALUES = f"""
INSERT INTO indicator_values ({", ".join(VALUE_COLUMNS)})
SELECT {", ".join(VALUE_COLUMNS)} FROM staging_values
ON CONFLICT DO NOTHING
"""

ALERT_COLUMNS = (
    "alert_id",
    "indicator",
    "scope_level",
    "scope_id",
    "condition",
    "status",
    "level",
    "peak_level",
    "value",
    "threshold",
    "occurrences",
    "opened_at",
    "updated_at",
    "resolved_at",
    "last_seq",
)
PEAK_ORDER = ("blue", "yellow", "orange", "red")
_LEVELS = f"ARRAY{list(PEAK_ORDER)}"

# A batch of transitions in one statement, its rows one JSON parameter parsed once by
# PostgreSQL (psycopg dumps array parameters element by element in Python: 33 ms for a storm's
# 742 transitions; JSON goes out of orjson in one piece). The transitions go in, a re-emitted
# one (same id) as a no-op. Each alert is upserted once, from its latest transition in the
# batch, with the highest level any of them reached: that leaves it as upserting each
# transition in order would (an upsert only ever moves an alert on to a later transition and
# keeps its peak), and a storm's window close brings hundreds at once. A redelivered older
# transition changes nothing. Against two statements with the alert rows built in Python:
# 716 transitions in 29-38 ms instead of 30-55 on an idle machine, 38-57 instead of 55-73
# with both cores busy.
STORE_TRANSITIONS = f"""
WITH batch AS MATERIALIZED (
    SELECT * FROM json_populate_recordset(NULL::alert_transitions, %s::json)
), stored AS (
    INSERT INTO alert_transitions ({", ".join(TRANSITION_COLUMNS)})
    SELECT {", ".join(TRANSITION_COLUMNS)} FROM batch
    ON CONFLICT DO NOTHING
)
INSERT INTO alerts ({", ".join(ALERT_COLUMNS)})
SELECT DISTINCT ON (alert_id)
    alert_id, indicator, scope_level, scope_id, condition,
    CASE WHEN kind = 'resolved' THEN 'resolved' ELSE 'firing' END,
    level,
    ({_LEVELS})[max(array_position({_LEVELS}, coalesce(level, previous_level)))
        OVER (PARTITION BY alert_id)],
    value, threshold, occurrences, opened_at, observed_at,
    CASE WHEN level IS NULL THEN observed_at END,
    seq
FROM batch
ORDER BY alert_id, seq DESC
ON CONFLICT (alert_id) DO UPDATE SET
    status = EXCLUDED.status,
    level = EXCLUDED.level,
    peak_level = CASE
        WHEN array_position({_LEVELS}, EXCLUDED.peak_level)
           > array_position({_LEVELS}, alerts.peak_level)
        THEN EXCLUDED.peak_level ELSE alerts.peak_level END,
    value = EXCLUDED.value,
    threshold = EXCLUDED.threshold,
    occurrences = EXCLUDED.occurrences,
    updated_at = EXCLUDED.updated_at,
    resolved_at = EXCLUDED.resolved_at,
    last_seq = EXCLUDED.last_seq
WHERE alerts.last_seq < EXCLUDED.last_seq
"""

# Compare-and-set on the offset this writer last stored (or read at assignment): a member that
# lost the partition in a rebalance but is still writing (a zombie) finds it moved, and so
# does a writer whose last commits the database lost (a crash with commits that did not wait
# for the disk, a failover to a standby that had not caught up) and finds it moved back;
# either writes nothing and re-reads from the stored offsets. A batch must also start at or
# after it: a batch already written, delivered again, is refused too. Offsets may have gaps in
# Kafka (a batch can start past the stored offset). With none expected, only a partition
# without a stored offset is written (its row is made here).
ADVANCE_OFFSET = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at)
SELECT %(group)s, %(topic)s, %(partition)s, %(next)s, now()
WHERE %(expected)s::bigint IS NULL OR EXISTS (
    SELECT 1 FROM consumer_offsets
    WHERE consumer_group = %(group)s AND topic = %(topic)s AND partition = %(partition)s
)
ON CONFLICT (consumer_group, topic, partition)
DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
WHERE consumer_offsets.next_offset = %(expected)s::bigint AND %(expected)s::bigint <= %(first)s
"""


def transitions_json(transitions: list[AlertTransition]) -> str:
    """Transitions as the JSON array ``STORE_TRANSITIONS`` reads: their fields are its
    columns, and orjson writes the ids, instants and levels as the contract does. A model's
    ``vars`` are its fields: 0.6 ms for a storm's 716, where ``dict(model)`` takes 5.6."""
    return orjson.dumps([vars(t) for t in transitions]).decode()


def value_row(v: IndicatorValue) -> tuple[object, ...]:
    """An indicator value as a row in ``VALUE_COLUMNS`` order."""
    return (
        v.indicator,
        v.scope_level.value,
        v.scope_id,
        v.window_start,
        v.window_end,
        v.value,
        v.samples,
        v.level.value if v.level else None,
        v.value_id,
    )


def ticket_rows(t: HotlineTicket) -> tuple[tuple[object, ...], tuple[object, ...] | None]:
    """A ticket's row, and its caller's row (None when the caller left no personal data)."""
    loc = t.location
    ticket = (
        t.ticket_id,
        t.category,
        t.description,
        t.reported_at,
        t.urgent,
        t.address,
        loc.lon,
        loc.lat,
        loc.grid,
        loc.street,
        loc.district,
        t.media_url,
        t.channel.value,
        t.external_id,
    )
    caller = (t.ticket_id, t.caller.name, t.caller.phone)
    return ticket, (caller if t.caller.name or t.caller.phone else None)


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and hostile payloads may carry it.
    return text.replace("\x00", "\ufffd")


def letter_row(letter: DeadLetter) -> tuple[object, ...]:
    """A dead letter as a row in ``LETTER_COLUMNS`` order."""
    return (
        _storable(letter.source),
        _storable(letter.reason),
        _storable(letter.payload),
        letter.truncated,
        letter.received_at,
        letter.topic,
        letter.partition,
        letter.offset,
    )


@dataclass
class Decoded:
    """A batch sorted into what goes where."""

    readings: list[tuple[object, ...]] = field(default_factory=list)
    transitions: list[AlertTransition] = field(default_factory=list)
    values: list[tuple[object, ...]] = field(default_factory=list)
    letters: list[tuple[object, ...]] = field(default_factory=list)
    tickets: list[tuple[object, ...]] = field(default_factory=list)
    callers: list[tuple[object, ...]] = field(default_factory=list)
    rejected: list[tuple[str, ConsumerRecord[bytes, bytes]]] = field(default_factory=list)


async def copy_rows(
    cur: psycopg.AsyncCursor[tuple[object, ...]],
    table: str,
    columns: tuple[str, ...],
    types: tuple[str, ...],
    rows: list[tuple[object, ...]],
) -> None:
    """Load rows with binary COPY."""
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    async with cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


async def ids_required(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
    """Whether ``readings.reading_id`` is still NOT NULL (migration 0011 could not drop it: a
    TimescaleDB before 2.18 with compression on), so the writer must store derived ids."""
    cur = await conn.execute(
        "SELECT attnotnull FROM pg_attribute "
        "WHERE attrelid = 'readings'::regclass AND attname = 'reading_id'"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


class WriterHandler:
    """Writes each batch and its end offsets in one PostgreSQL transaction."""

    def __init__(
        self,
        settings: Settings,
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None,
        producer: AIOKafkaProducer,
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.group = settings.writer.consumer_group
        self.conn = conn
        self.staged = False  # staging tables exist on this connection
        self.marks_rollups = False  # plain layout: mark the rollup buckets readings change
        self.derives_ids = False  # readings.reading_id is NOT NULL: store derived ids
        self.producer = producer
        self.nice_backend = False  # give the writing connection's backend this niceness
        # The stored offset each partition's next batch must find (None: no row yet), from
        # assignment and from this writer's own commits: see ADVANCE_OFFSET.
        self.expected: dict[TopicPartition, int | None] = {}

    async def connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        """The writing connection, opened again after the database went away. One found
        closed is reported (``Unavailable``) rather than silently replaced: what it last
        committed may not have lasted, and the consumer loop first rewinds to the stored
        offsets."""
        if self.conn is not None and self.conn.closed:
            raise await self._lost(psycopg.OperationalError("the connection was closed"))
        try:
            if self.conn is None:
                self.conn = None
                self.staged = False
                url = self.settings.db.url.get_secret_value()
                self.conn = await psycopg.AsyncConnection.connect(
                    url, autocommit=True, connect_timeout=5
                )
                log.info("connected to PostgreSQL")
                if self.nice_backend:
                    await nice_backend(self.conn)
            if not self.staged:
                await self.conn.execute(STAGING)
                # Safe either way: see WriterSettings.synchronous_commit.
                commit = "on" if self.settings.writer.synchronous_commit else "off"
                await self.conn.execute(f"SET synchronous_commit = {commit}")
                self.marks_rollups = await current(self.conn) is Layout.PLAIN
                self.derives_ids = await ids_required(self.conn)
                self.staged = True
        except psycopg.OperationalError as exc:
            raise await self._lost(exc) from exc
        return self.conn

    async def _lost(self, exc: psycopg.OperationalError) -> Unavailable:
        """Forget a connection that failed; the batch is re-read once one works again."""
        if self.conn is not None:
            await self.conn.close()
        self.conn = None
        return Unavailable(f"PostgreSQL went away: {exc}")

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        # Its own connection: the rebalance listener may run while a batch's transaction is
        # open on the writing one, and must read committed offsets only.
        url = self.settings.db.url.get_secret_value()
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=5
            ) as conn:
                cur = await conn.execute(
                    "SELECT topic, partition, next_offset FROM consumer_offsets "
                    "WHERE consumer_group = %s",
                    (self.group,),
                )
                rows = cast(list[tuple[str, int, int]], await cur.fetchall())
        except psycopg.OperationalError as exc:
            # Kafka's committed offsets may run ahead of the stored ones (a commit lost in a
            # crash): the consumer loop rewinds to these once it can read them.
            raise Unavailable(f"cannot read stored offsets: {exc}") from exc
        kept = {TopicPartition(t, p): o for t, p, o in rows}
        for tp in partitions:
            self.expected[tp] = kept.get(tp)
        return {tp: kept[tp] for tp in partitions if tp in kept}

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        return None  # nothing held in memory between batches

    def decode(self, batch: Batch) -> Decoded:
        out = Decoded()
        topics = self.topics
        for tp, records in batch.items():
            if tp.topic == topics.readings:
                # The hot path: frames checked column by column in pydantic-core.
                rows, derive = out.readings, self.derives_ids
                for record in records:
                    if record.headers and is_tick(record):
                        continue
                    # When the broker took the record (the time ingest handed it over).
                    at = record.timestamp * 1000 - PG_EPOCH_US
                    try:
                        rows += frame_rows(read_frame(record.value or b""), at, derive=derive)
                    except ValidationError as exc:
                        out.rejected.append((describe_errors(exc), record))
                    except FrameError as exc:
                        out.rejected.append((str(exc), record))
                continue
            if tp.topic == topics.dead_letter:
                for record in records:
                    out.letters.append(self.letter_row(record))
                continue
            for record in records:
                if record.headers and is_tick(record):
                    continue
                raw = record.value or b""
                try:
                    if tp.topic == topics.alerts:
                        # The contract refuses NaN and infinity, which JSON (how the rows go
                        # to PostgreSQL) could not carry anyway.
                        out.transitions.append(AlertTransition.model_validate_json(raw))
                    elif tp.topic == topics.indicator_values:
                        out.values.append(value_row(IndicatorValue.model_validate_json(raw)))
                    elif tp.topic == topics.tickets:
                        ticket, caller = ticket_rows(HotlineTicket.model_validate_json(raw))
                        out.tickets.append(ticket)
                        if caller is not None:
                            out.callers.append(caller)
                except ValidationError as exc:
                    out.rejected.append((describe_errors(exc), record))
        return out

    @staticmethod
    def letter_row(record: ConsumerRecord[bytes, bytes]) -> tuple[object, ...]:
        """A dead letter's row; a record on the dead-letter topic that is not one is stored as
        a letter about itself (sending it back to the topic would loop)."""
        raw = record.value or b""
        try:
            return letter_row(DeadLetter.model_validate_json(raw))
        except ValidationError as exc:
            reason = f"not a dead letter: {describe_errors(exc)}"
            return letter_row(dead_letter(SOURCE, reason, raw, record))

    async def handle(self, batch: Batch) -> None:
        try:
            await self._handle(batch)
        except psycopg.OperationalError as exc:
            raise await self._lost(exc) from exc

    async def _handle(self, batch: Batch) -> None:
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
                        if tp.topic == self.topics.dead_letter:
                            log.error(
                                "PostgreSQL refused dead letter %s@%d; skipped: %s",
                                tp,
                                record.offset,
                                refused,
                            )
                        else:
                            reason = f"PostgreSQL refused it: {refused}"
                            await self.dead_letter([(reason, record)])
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
        began = time.time()
        conn = await self.connection()
        if decoded.transitions and not (
            decoded.readings or decoded.letters or decoded.tickets or decoded.values
        ):
            await self._write_transitions(conn, batch, decoded.transitions)
            self._log_transitions(batch, len(decoded.transitions), began)
            return
        async with conn.transaction(), conn.cursor() as cur:
            for tp, records in batch.items():
                if not records:
                    continue
                await cur.execute(ADVANCE_OFFSET, self._advance(tp, records))
                if cur.rowcount != 1:
                    raise Fenced(
                        f"{tp} is not at offset {self.expected.get(tp)} or was written past "
                        f"{records[0].offset}"
                    )
            if decoded.readings:
                await copy_rows(cur, "readings", READING_COLUMNS, READING_TYPES, decoded.readings)
                if self.marks_rollups:
                    await cur.execute(MARK_CHANGED, (minutes_of(decoded.readings),))
            if decoded.letters:
                await copy_rows(
                    cur, "staging_letters", LETTER_COLUMNS, LETTER_TYPES, decoded.letters
                )
                await cur.execute(MOVE_LETTERS)
            if decoded.tickets:
                await copy_rows(
                    cur, "staging_tickets", TICKET_COLUMNS, TICKET_TYPES, decoded.tickets
                )
                await copy_rows(
                    cur, "staging_callers", CALLER_COLUMNS, CALLER_TYPES, decoded.callers
                )
                await cur.execute(MOVE_TICKETS)
            if decoded.values:
                await copy_rows(cur, "staging_values", VALUE_COLUMNS, VALUE_TYPES, decoded.values)
                await cur.execute(MOVE_VALUES)
            if decoded.transitions:
                await cur.execute(STORE_TRANSITIONS, (transitions_json(decoded.transitions),))
        self._stored(batch)
        if decoded.transitions:
            self._log_transitions(batch, len(decoded.transitions), began)

    def _stored(self, batch: Batch) -> None:
        """The batch's transaction committed: its end offsets are what the next expects."""
        for tp, records in batch.items():
            if records:
                self.expected[tp] = records[-1].offset + 1

    def _advance(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> Params:
        return {
            "group": self.group,
            "topic": tp.topic,
            "partition": tp.partition,
            "first": records[0].offset,
            "next": records[-1].offset + 1,
            "expected": self.expected.get(tp),
        }

    async def _write_transitions(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        batch: Batch,
        transitions: list[AlertTransition],
    ) -> None:
        """The alerts' path: offsets, transitions and alert upserts go as one pipeline, two
        round trips in all (the statements, then the commit once the offsets are checked)
        instead of one a statement. On a busy machine each round trip waits for the backend
        to be scheduled; at a storm's window close that was most of an alert's time here."""
        async with conn.pipeline() as pipeline, conn.transaction():
            advanced = [
                (
                    tp,
                    records[0].offset,
                    await conn.execute(ADVANCE_OFFSET, self._advance(tp, records)),
                )
                for tp, records in batch.items()
                if records
            ]
            await conn.execute(STORE_TRANSITIONS, (transitions_json(transitions),))
            await pipeline.sync()
            for tp, first, cur in advanced:
                if cur.rowcount != 1:
                    raise Fenced(f"{tp} was written past offset {first}")
        self._stored(batch)

    @staticmethod
    def _log_transitions(batch: Batch, count: int, began: float) -> None:
        produced = min(r.timestamp for records in batch.values() for r in records) / 1000
        log.info(
            "stored %d alert transitions: the oldest was produced %.0f ms before the "
            "transaction began, which took %.0f ms to commit",
            count,
            (began - produced) * 1000,
            (time.time() - began) * 1000,
        )


async def nice_backend(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    """Give the connection's PostgreSQL backend (on this host) this process's niceness.

    PostgreSQL has no per-session CPU priority, so a niced role would still have its COPY
    and upkeep run at full priority in its backend, beside the alerts it is niced to make way
    for. Only for a database on this host (``writer.nice_database_backends``); the backend's
    command line is checked first, and a refusal is logged, never fatal."""
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    if row is None:
        return
    renice_backend(cast(int, row[0]), os.getpriority(os.PRIO_PROCESS, 0))


def renice_backend(pid: int, niceness: int) -> None:
    """Lower a local PostgreSQL backend's priority to ``niceness`` (never raise it)."""
    try:
        if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres"):
            log.warning("process %d is no PostgreSQL backend of this host; not renicing", pid)
            return
        if os.getpriority(os.PRIO_PROCESS, pid) < niceness:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError as exc:
        log.warning("cannot renice PostgreSQL backend %d: %s", pid, exc)


async def run_maintenance(settings: Settings, stop: asyncio.Event, *, nice: bool = False) -> None:
    """Keep rollups and retention up to date (plain layout), surviving database outages."""
    url = settings.db.url.get_secret_value()
    layout: Layout | None = None
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=5
            ) as conn:
                if nice:
                    await nice_backend(conn)
                if layout is None:
                    layout = await prepare(conn, settings.storage)
                if layout is Layout.PLAIN:
                    await maintain(conn, settings.storage, now=datetime.now(UTC))
        except psycopg.OperationalError as exc:
            log.warning("storage upkeep skipped, PostgreSQL unavailable: %s", exc)
        if layout is Layout.TIMESCALEDB:
            return  # TimescaleDB's own scheduler runs the policies from here on
        wait = until_round(
            time.time(),
            settings.writer.maintenance_interval_seconds,
            settings.writer.maintenance_offset_seconds,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


# The writer's consumers, each in its own group and process: an alert never waits for a batch
# of readings being decoded and copied, nor for the burst of values every window close brings.
ROLES = ("readings", "alerts", "events")


def role_consumer(settings: Settings, role: str) -> tuple[str, list[str]]:
    """The consumer group and topics of one writer role. All keep their offsets in
    ``consumer_offsets`` under the writer's group name: their topics do not overlap."""
    topics = settings.kafka.topics
    group = settings.writer.consumer_group
    match role:
        case "readings":
            return group, [topics.readings]
        case "alerts":
            return f"{group}-alerts", [topics.alerts]
        case "events":
            return f"{group}-events", [topics.indicator_values, topics.tickets, topics.dead_letter]
    raise ValueError(f"no writer role {role!r}; roles: {', '.join(ROLES)}")


async def run(settings: Settings, stop: asyncio.Event, role: str | None = None) -> None:
    """Run the writer until ``stop`` is set: one ``role``'s consumer in this process, or with
    none, every role in a child process of its own (``city-vitals writer --role``), ending
    (for a supervisor to restart it) if a child does. The readings role also keeps the
    storage upkeep (rollups and retention on plain PostgreSQL)."""
    if role is None:
        await _supervise(stop, settings.writer.readings_processes)
        return
    group_id, subscribed = role_consumer(settings, role)
    bulk = role != "alerts" and settings.writer.bulk_niceness > 0
    if bulk:
        os.nice(settings.writer.bulk_niceness)
    nice = bulk and settings.writer.nice_database_backends
    await wait_for_broker(settings.kafka)
    producer = make_producer(settings.kafka)
    await producer.start()
    handler = WriterHandler(settings, None, producer)
    handler.nice_backend = nice
    with contextlib.suppress(Unavailable):  # else the first batch connects
        # Connected and staged before the first batch: the first alert should not wait for it.
        await handler.connection()
    upkeep = (
        asyncio.create_task(run_maintenance(settings, stop, nice=nice))
        if role == "readings"
        else None
    )
    try:
        await run_consumer(
            settings.kafka,
            group_id=group_id,
            topics=subscribed,
            handler=handler,
            stop=stop,
            # Alerts are few: polling the broker more often costs little and saves them time.
            # The bulk is fetched in large pieces: a fetch that returns data costs the broker
            # in proportion to what the partition holds (Tansu lists it whole).
            fetch_max_wait_ms=10 if role == "alerts" else settings.writer.bulk_fetch_max_wait_ms,
            fetch_min_bytes=1 if role == "alerts" else settings.writer.bulk_fetch_min_bytes,
        )
    finally:
        if upkeep is not None:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
        if handler.conn is not None:
            await handler.conn.close()
        await producer.stop()


def _spawn(role: str) -> subprocess.Popen[bytes]:
    """``city-vitals writer --role`` as a child that ends when this process does."""
    command = ["writer", "--no-migrate", "--role", role, "--exit-with", str(os.getpid())]
    return subprocess.Popen([sys.executable, "-m", "services.cli", *command])


async def _supervise(stop: asyncio.Event, readings_processes: int = 1) -> None:
    """A child a role, ``readings_processes`` for readings (one consumer group: they share
    the readings topic's partitions, each writing through a PostgreSQL backend of its own)."""
    names = [
        f"{role} {n + 1}" if role == "readings" and readings_processes > 1 else role
        for role in ROLES
        for n in range(readings_processes if role == "readings" else 1)
    ]
    children = {name: _spawn(name.split()[0]) for name in names}
    try:
        while not stop.is_set():
            for role, child in children.items():
                if child.poll() is not None:
                    raise RuntimeError(f"writer {role} exited with code {child.returncode}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()  # each finishes its batch
        for role, child in children.items():
            try:
                await asyncio.to_thread(child.wait, 30)
            except subprocess.TimeoutExpired:
                log.error("writer %s did not stop in 30 s; killing it", role)
                child.kill()
