"""The rules engine process: readings and tickets in, alert transitions and indicator values
out, through the pure engine (rules/engine.py).

Commit discipline: a batch's outputs are produced; every ``rules.commit_seconds`` the producer's
acknowledgements are awaited and then each task's snapshot is saved with the offset it has
consumed, in one PostgreSQL transaction. On (re)assignment a task resumes from its snapshot
and offset, so a crash replays at most the records after the last save, and the pure engine
re-emits exactly what it emitted before (same ids): downstream stores them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer, TopicPartition

from rules import state
from rules.engine import Definitions, Output, RollupTask, SourceTask, encode_tick
from rules.indicators import Catalogue, Source
from schemas.topics import Topics
from services.config import Settings
from services.kafka import (
    TICK_HEADER,
    Batch,
    Fenced,
    KeyedBatches,
    dead_letter,
    encode,
    is_tick,
    make_producer,
    run_consumer,
    wait_for_broker,
)

log = logging.getLogger(__name__)

SOURCE = "rules"
SLOW_BATCH_SECONDS = 0.1  # a batch taking longer is logged, with where the time went
Task = SourceTask | RollupTask


def _log_slow(
    done: list[tuple[TopicPartition, Output, Sequence[Any]]],
    took: float,
    waited: float,
    folding: float,
    alerting: float,
) -> None:
    """Where a slow batch's time went, and what it held."""
    topics: Counter[str] = Counter()
    for tp, _, fresh in done:
        topics[tp.topic] += len(fresh)
    outs = [out for _, out, _ in done]
    log.info(
        "slow batch: %d ms (folding %d, alerts out %d after, the rest %d) for %s, its oldest "
        "record produced %d ms before; out: %d transitions, %d values, %d partials",
        took * 1000,
        folding * 1000,
        alerting * 1000,
        (took - folding - alerting) * 1000,
        ", ".join(f"{n} of {topic}" for topic, n in sorted(topics.items())),
        waited * 1000,
        sum(len(out.changes) for out in outs),
        sum(len(out.closed) for out in outs),
        sum(len(out.partials) for out in outs),
    )


def _log_alerts(batch: Batch, sent: int, taken: float, folding: float, sending: float) -> None:
    """How long a batch that changed alerts took from its records' producers to the broker:
    what an operator asks when an alert seems late."""
    stamps = [r.timestamp for records in batch.values() for r in records]
    log.info(
        "%d alert transitions out of %d records: their newest record produced %d ms and their "
        "oldest %d ms before the batch was taken up; folded in %d ms, sent in %d ms",
        sent,
        len(stamps),
        taken * 1000 - max(stamps),
        taken * 1000 - min(stamps),
        folding * 1000,
        sending * 1000,
    )


def due_saves(
    dirty: set[TopicPartition],
    snapshot_at: Mapping[TopicPartition, float],
    *,
    saved_at: float,
    tasks: int,
    commit: float,
    now: float,
    paced: bool = True,
) -> set[TopicPartition]:
    """Which tasks to save now: each unsaved task once ``commit`` seconds have passed since
    its last snapshot. While batches flow (``paced``), one at a time, the saves spread over
    that interval: pickling stops the loop, and all tasks at once held alerts up by 20-60 ms
    every second. Between batches, every task that is due."""
    if commit == 0:
        return set(dirty)
    due = [tp for tp in dirty if now - snapshot_at.get(tp, 0.0) >= commit]
    if not paced:
        return set(due)
    if not due or now - saved_at < commit / max(tasks, 1):
        return set()
    return {min(due, key=lambda tp: snapshot_at.get(tp, 0.0))}


class RulesHandler:
    """The engine tasks of the partitions this member owns, and their saving."""

    def __init__(
        self,
        settings: Settings,
        defs: Definitions,
        producer: AIOKafkaProducer,
        prompt: AIOKafkaProducer | None = None,
    ) -> None:
        self.settings = settings
        self.topics: Topics = settings.kafka.topics
        self.group = settings.rules.consumer_group
        self.url = settings.db.url.get_secret_value()
        self.defs = defs
        self.producer = producer
        self.batches = KeyedBatches(producer)
        # Alerts and what the roll-up stage waits for (partials, marks) have a producer, a
        # connection, of their own: a producer has one request in flight per broker, and they
        # must not queue behind the burst of indicator values every window close brings.
        self.prompt = KeyedBatches(prompt or producer)
        self.sources = {Source.SENSOR: self.topics.readings, Source.TICKETS: self.topics.tickets}
        self.tasks: dict[TopicPartition, Task] = {}
        self.stored: dict[TopicPartition, int | None] = {}  # offset in PostgreSQL (CAS)
        self.position: dict[TopicPartition, int] = {}  # next offset the task will consume
        self.dirty: set[TopicPartition] = set()
        self.last_record: dict[TopicPartition, float] = {}  # wall clock, for ticks
        self.pending: list[asyncio.Future[Any]] = []
        self.saved_at = time.monotonic()  # the latest save of any task
        self.snapshot_at: dict[TopicPartition, float] = {}  # each task's latest snapshot
        self.conn: psycopg.AsyncConnection[Any] | None = None  # for saves
        self.saving = asyncio.Lock()
        self.late = 0
        self.in_batch = False  # a batch is between folding and advancing its positions

    def use(self, defs: Definitions) -> None:
        """New definitions or emergency scopes, applied from the next batch on."""
        self.defs = defs

    # -- assignment ---------------------------------------------------------------------

    async def _new_task(self, tp: TopicPartition) -> Task:
        if tp.topic == self.topics.rollup:
            return RollupTask(topics=self.sources)
        source = Source.SENSOR if tp.topic == self.topics.readings else Source.TICKETS
        partitions = await self.producer.partitions_for(tp.topic)
        return SourceTask(tp.topic, tp.partition, len(partitions), source)

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Restore each task from its snapshot; resume from the offset saved with it."""
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5
                ) as conn:
                    kept = await state.load(conn, self.group, partitions)
                break
            except psycopg.OperationalError as exc:
                # Without the snapshot we cannot know where to resume: wait for PostgreSQL.
                log.warning("cannot load engine state (retrying in %.1f s): %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        resume: dict[TopicPartition, int] = {}
        for tp in partitions:
            offset, task = kept.get(tp, (None, None))
            if offset is not None and task is None:
                log.warning("snapshot of %s is of an older format: replaying its partition", tp)
            if task is None:
                task = await self._new_task(tp)
                offset_from = 0
            else:
                offset_from = offset or 0
            assert isinstance(task, SourceTask | RollupTask)
            self.tasks[tp] = task
            self.stored[tp] = offset
            self.position[tp] = resume[tp] = offset_from
            self.last_record[tp] = self.snapshot_at[tp] = time.monotonic()
        log.info("engine tasks restored: %s", ", ".join(f"{t.topic}:{t.partition}" for t in resume))
        return resume

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Save what is leaving so the next owner starts from here, then drop it."""
        mine = {tp for tp in partitions if tp in self.tasks}
        with contextlib.suppress(Fenced):
            await self.save(mine)
        for tp in mine:
            tables = (self.tasks, self.stored, self.position, self.last_record, self.snapshot_at)
            for table in tables:
                table.pop(tp, None)
            self.dirty.discard(tp)

    # -- processing ---------------------------------------------------------------------

    async def handle(self, batch: Batch) -> None:
        """Fold every partition's records, then emit: the alerts of all partitions first (a
        window close makes every partition emit a burst of values), then what the roll-up
        stage waits for, then the rest."""
        self.in_batch = True
        began = time.perf_counter()
        # How long the oldest record waited between its producer and this handler.
        taken = time.time()
        waited = taken - min(
            (records[0].timestamp / 1000 for records in batch.values() if records), default=0
        )
        try:
            done: list[tuple[TopicPartition, Output, Sequence[Any]]] = []
            for tp, records in batch.items():
                task = self.tasks.get(tp)
                if task is None:
                    continue  # revoked while the batch was in flight
                position = self.position[tp]
                fresh = (
                    records
                    if records and records[0].offset >= position  # the usual case: all of it
                    else [r for r in records if r.offset >= position]
                )
                if not fresh:
                    continue
                if isinstance(task, SourceTask):
                    out = task.process(
                        self.defs,
                        [(r.value or b"", bool(r.headers) and is_tick(r)) for r in fresh],
                    )
                else:
                    out = task.process(self.defs, [r.value or b"" for r in fresh])
                done.append((tp, out, fresh))
            folded = time.perf_counter()
            sent = await self._emit_alerts(done)
            alerted = time.perf_counter()
            if sent:
                _log_alerts(batch, sent, taken, folded - began, alerted - folded)
            for _, out, fresh in done:
                await self._emit_rest(out, fresh)
            took = time.perf_counter() - began
            if took >= SLOW_BATCH_SECONDS:
                _log_slow(done, took, waited, folded - began, alerted - folded)
            for tp, _, fresh in done:
                self.position[tp] = fresh[-1].offset + 1
                self.last_record[tp] = time.monotonic()
                self.dirty.add(tp)
            if due := self.due():
                await self.save(due)
        finally:
            self.in_batch = False

    async def _emit_alerts(self, done: list[tuple[TopicPartition, Output, Sequence[Any]]]) -> int:
        """Send the batch's alert transitions and wait until the broker has them; how many."""
        transitions = [record for _, out, _ in done for record in out.transition_records()]
        if transitions:
            self.pending += await self.prompt.send(self.topics.alerts, transitions)
            # Out now: the loop is busy with this batch's other outputs until it ends, and the
            # producer's sender would wait for it.
            await self.prompt.producer.flush()
        return len(transitions)

    async def _emit_rest(self, out: Output, records: Sequence[Any]) -> None:
        topics = self.topics
        pending = self.pending
        prompt = self.prompt
        # Partials before the marks that follow them on every roll-up partition: the roll-up
        # stage closes a window on the marks, so they too go ahead of the values.
        pending += await prompt.send(topics.rollup, [(p.key, encode(p)) for p in out.partials])
        if out.marks:
            send = prompt.producer.send
            for partition in sorted(await prompt.producer.partitions_for(topics.rollup)):
                for m in out.marks:
                    pending.append(await send(topics.rollup, encode(m), partition=partition))
        pending += await self.batches.send(topics.indicator_values, out.value_records())
        for pos, reason in out.rejected:
            record = records[pos]
            letter = dead_letter(SOURCE, reason, record.value or b"", record)
            pending.append(await self.producer.send(topics.dead_letter, encode(letter)))
        if out.rejected:
            log.warning("%d malformed records dead-lettered", len(out.rejected))
        if out.late:
            self.late += out.late
            log.info("%d late readings left out of closed windows (%d so far)", out.late, self.late)

    async def save(self, partitions: set[TopicPartition]) -> None:
        """Outputs acknowledged first; then snapshots and offsets in one transaction."""
        async with self.saving:
            await self._save(partitions)

    async def _save(self, partitions: set[TopicPartition]) -> None:
        # Each snapshot is taken (pickled) at once with its offset, before any await, so a
        # batch handled while this waits cannot make the pair disagree.
        todo = {tp for tp in partitions if tp in self.tasks and tp in self.dirty}
        began = time.perf_counter()
        snapshots = {
            tp: (self.stored[tp], self.position[tp], state.snapshot(self.tasks[tp])) for tp in todo
        }
        took = time.perf_counter() - began
        if took >= SLOW_BATCH_SECONDS:
            log.info(
                "snapshots of %d tasks took %d ms (%d kB)",
                len(snapshots),
                took * 1000,
                sum(len(blob) for _, _, blob in snapshots.values()) // 1024,
            )
        pending, self.pending = self.pending, []
        self.saved_at = time.monotonic()
        for tp in snapshots:
            self.snapshot_at[tp] = self.saved_at
        if pending:
            await asyncio.gather(*pending)
        if not snapshots:
            return
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5
                )
            await state.save(self.conn, self.group, snapshots)
        except state.Conflict as exc:
            # Another member owns these now: forget ours and re-read from the stored state.
            log.warning("engine state fenced: %s", exc)
            self.dirty.clear()
            raise Fenced(str(exc)) from exc
        except psycopg.OperationalError as exc:
            # Alerts keep flowing; the snapshot is retried at the next save. A crash meanwhile
            # replays from the older one, re-emitting identical records.
            log.warning("cannot save engine state, retrying later: %s", exc)
            if self.conn is not None:
                await self.conn.close()
                self.conn = None
            return
        for tp, (_, offset, _) in snapshots.items():
            if tp in self.stored:
                self.stored[tp] = offset
                if self.position.get(tp) == offset:
                    self.dirty.discard(tp)

    async def save_when_due(self) -> None:
        """Save what is unsaved once ``commit_seconds`` have passed, even when no new batch
        comes (the last batch of a burst must not wait for the next burst)."""
        if self.in_batch:
            return  # tasks folded records whose positions are not yet advanced: not now
        if due := self.due(paced=False):
            with contextlib.suppress(Fenced):  # the consumer loop re-reads on its next batch
                await self.save(due)

    def due(self, *, paced: bool = True) -> set[TopicPartition]:
        """The tasks to save now (see ``due_saves``)."""
        return due_saves(
            self.dirty,
            self.snapshot_at,
            saved_at=self.saved_at,
            tasks=len(self.tasks),
            commit=self.settings.rules.commit_seconds,
            now=time.monotonic(),
            paced=paced,
        )

    # -- time ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """Give every owned source partition that has gone quiet a tick: its event time moves
        on by the wall-clock time it has been quiet, written into the log itself."""
        now = time.monotonic()
        quiet = self.settings.rules.tick_seconds
        for tp, task in list(self.tasks.items()):
            if not isinstance(task, SourceTask):
                continue
            idle = now - self.last_record.get(tp, now)
            if idle < quiet:
                continue
            at = int(time.time() * 1000) if task.max_ts is None else task.max_ts + int(idle * 1000)
            await self.producer.send(
                tp.topic, encode_tick(at), partition=tp.partition, headers=[(TICK_HEADER, b"1")]
            )
            self.last_record[tp] = now


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the rules engine until ``stop`` is set."""
    catalogue = Catalogue.from_yaml(settings.rules.catalogue)
    log.info("rules engine loaded %d indicators", len(catalogue))
    await wait_for_broker(settings.kafka)
    producer, prompt = make_producer(settings.kafka), make_producer(settings.kafka, linger_ms=0)
    await producer.start()
    await prompt.start()
    handler = RulesHandler(
        settings, Definitions(catalogue, stale_factor=settings.rules.stale_factor), producer, prompt
    )
    topics = settings.kafka.topics
    watcher = asyncio.create_task(watch_definitions(settings, handler, stop))
    ticker = asyncio.create_task(tick_forever(settings, handler, stop))
    try:
        await run_consumer(
            settings.kafka,
            group_id=settings.rules.consumer_group,
            topics=[topics.readings, topics.tickets, topics.rollup],
            handler=handler,
            stop=stop,
            # An alert is due as soon as the record closing its window is in, but a fetch
            # every 10 ms when caught up cost the local broker a seventh of its CPU for no
            # gain in bench.e2e (engine's part p50 75 ms at 50, 61-118 ms at 10): the
            # readings keep coming, so a fetch seldom waits its whole 50 ms.
            fetch_max_wait_ms=50,
        )
        await handler.save(set(handler.tasks))
    finally:
        watcher.cancel()
        ticker.cancel()
        if handler.conn is not None:
            await handler.conn.close()
        await producer.stop()
        await prompt.stop()


async def tick_forever(settings: Settings, handler: RulesHandler, stop: asyncio.Event) -> None:
    """Ticks for quiet partitions, and saves that are due while no batch comes."""
    every = min(settings.rules.tick_seconds / 2, max(settings.rules.commit_seconds, 0.2))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if not stop.is_set():
            await handler.tick()
            await handler.save_when_due()


async def watch_definitions(settings: Settings, handler: RulesHandler, stop: asyncio.Event) -> None:
    """Poll the definitions version in PostgreSQL; on a change load the live definitions and
    emergency switches into the running engine (no restart). While PostgreSQL holds no
    definitions the catalogue file stays in force; while it is unreachable the last ones do."""
    from services.indicators import store

    seen = -1
    url = settings.db.url.get_secret_value()
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None  # kept between polls
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        url, autocommit=True, connect_timeout=5
                    )
                at = await store.version(conn)
                if at != seen:
                    at, catalogue = await store.current(conn)
                    switches = await store.emergency(conn)
                    active = frozenset(s.scope for s in switches if s.active)
                    if len(catalogue):
                        handler.use(
                            Definitions(
                                catalogue,
                                emergency_districts=active - {store.CITY},
                                city_emergency=store.CITY in active,
                                stale_factor=settings.rules.stale_factor,
                            )
                        )
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
                if conn is not None:
                    await conn.close()
                conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.rules.definitions_poll_seconds)
    finally:
        if conn is not None:
            await conn.close()
