"""Kafka plumbing written once: producer factory, topic set-up, and the consumer commit loop.

The loop follows one discipline for every consumer: no auto-commit; take a batch, let the
handler write its effects durably (database rows, produced records flushed), and only then
commit the offsets. Handlers therefore see every record at least once and must be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner

from schemas.base import utcnow
from schemas.deadletter import DeadLetter
from services.config import KafkaSettings

log = logging.getLogger(__name__)

Batch = Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]


def make_producer(kafka: KafkaSettings, linger_ms: int | None = None) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas, idempotent where the broker allows."""
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        linger_ms=kafka.linger_ms if linger_ms is None else linger_ms,
        request_timeout_ms=kafka.request_timeout_ms,
        max_batch_size=1024 * 1024,
        compression_type=None if kafka.compression == "none" else kafka.compression,
    )


async def ensure_topics(kafka: KafkaSettings) -> None:
    """Create the platform's topics if they are missing (safe to call from every service)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=kafka.request_timeout_ms
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in kafka.topics.all() if t not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(t, kafka.partitions, kafka.replication_factor) for t in missing]
            )
            for topic, code, *message in response.topic_errors:
                # Another service may create it between our list and create: that is fine.
                if code and code != TopicAlreadyExistsError.errno:
                    raise for_code(code)(f"cannot create topic {topic}: {message}")
            log.info("created topics %s with %d partitions", missing, kafka.partitions)
    finally:
        await admin.close()


async def wait_for_broker(kafka: KafkaSettings, patience: float = 60.0) -> None:
    """Block until the broker answers, so services can start before it in any order."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        try:
            await ensure_topics(kafka)
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"Kafka at {kafka.bootstrap_servers} did not answer") from exc
            log.info("waiting for Kafka at %s: %s", kafka.bootstrap_servers, exc)
            await asyncio.sleep(1.0)


def dead_letter(
    source: str,
    reason: str,
    raw: bytes | str,
    record: ConsumerRecord[bytes, bytes] | None = None,
) -> DeadLetter:
    """A dead letter for raw input, pointing at the record it came from when there is one."""
    payload, truncated = DeadLetter.bounded_payload(raw)
    return DeadLetter(
        source=source,
        reason=reason,
        payload=payload,
        truncated=truncated,
        received_at=utcnow(),
        topic=record.topic if record else None,
        partition=record.partition if record else None,
        offset=record.offset if record else None,
    )


# The rules engine writes ticks into the source topics it reads: event time moving on in a
# partition that has gone quiet, recorded in the log so a replay sees the same time pass.
# Every other consumer of those topics skips them by this header.
TICK_HEADER = "city-vitals-tick"


def is_tick(record: ConsumerRecord[bytes, bytes]) -> bool:
    """Whether a record is a rules-engine tick rather than data."""
    return any(key == TICK_HEADER for key, _ in record.headers or ())


def encode(model: Any) -> bytes:
    """JSON bytes of a contract model."""
    data: bytes = model.__pydantic_serializer__.to_json(model)
    return data


class _Open:
    """A batch still taking records from concurrent senders, until ``KeyedBatches.linger``
    has passed since its first. ``delivered`` settles with the broker's acknowledgement."""

    __slots__ = ("builder", "delivered")

    def __init__(self, builder: Any, delivered: asyncio.Future[Any]) -> None:
        self.builder = builder
        self.delivered = delivered


class KeyedBatches:
    """Records for a topic sent as one producer batch per partition (far cheaper than a send
    per record), placed by the producer's own key partitioner so a key keeps its partition.

    With ``linger`` (seconds), what concurrent senders hand over within it goes as one batch
    per partition. The producer sends a partition's batches one after another, each after its
    own linger, so with a batch per sender eight concurrent requests waited p50 38 ms for
    their acknowledgement, 10 ms sharing one (``python -m bench.broker --lingers 0,5``).
    Batches of a partition go to the producer in the order they were opened. The producer
    has one request in flight to a broker, one batch a partition in each, and takes a
    partition's next batch only once the one before has gone into a request: a batch closed
    after its linger waited behind the others all the same, so under load each request
    carried about one sender's records and ingest, its event loop half idle, took ~100,000
    readings/s. A batch whose linger is over stays open while the one before it waits."""

    CACHE = 1_000_000  # keys whose partition is remembered, per topic

    def __init__(self, producer: AIOKafkaProducer, linger: float = 0.0) -> None:
        self.producer = producer
        self.linger = linger
        self.partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._placed: dict[str, dict[bytes, int]] = {}
        self._open: dict[tuple[str, int], _Open] = {}
        # Per partition: settles when its last closed batch has been given to the producer.
        self._handed: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def send(
        self, topic: str, records: Sequence[tuple[bytes, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """Hand (key, value) records over; the futures settle when the broker acknowledges."""
        if not records:
            return []
        keys = [key for key, _ in records]
        by_partition = {
            p: [records[i] for i in items] for p, items in (await self.place(topic, keys)).items()
        }
        return await self.send_placed(topic, by_partition)

    async def place(self, topic: str, keys: Sequence[bytes]) -> dict[int, list[int]]:
        """The indexes of ``keys`` by the partition each hashes to, in order: for a sender that
        puts several items of a partition in one record."""
        partitions = sorted(await self.producer.partitions_for(topic))
        if len(partitions) == 1:
            # Nothing to choose (the local stack's topics). Hashing a storm's ~700 keys, new
            # to the cache, cost ~9 ms of an idle core on the alerts' path.
            return {partitions[0]: list(range(len(keys)))}
        if partitions != self._partitions.get(topic):
            self._partitions[topic], self._placed[topic] = partitions, {}
        placed = self._placed[topic]
        by_partition: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            partition = placed.get(key)
            if partition is None:
                # murmur2 in pure Python is dear: once per key.
                partition = self.partitioner(key, partitions, partitions)
                if len(placed) < self.CACHE:
                    placed[key] = partition
            by_partition.setdefault(partition, []).append(i)
        return by_partition

    async def send_placed(
        self, topic: str, by_partition: Mapping[int, Sequence[tuple[bytes | None, bytes]]]
    ) -> list[asyncio.Future[Any]]:
        """Hand (key, value) records over, each to the partition it is listed under."""
        if self.linger:
            return [f for p, items in by_partition.items() for f in self._join(topic, p, items)]
        sends: list[asyncio.Future[Any]] = []
        for partition, items in by_partition.items():
            batch = self.producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    sends.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            sends.append(await self.producer.send_batch(batch, topic, partition=partition))
        return sends

    def _join(
        self, topic: str, partition: int, items: Sequence[tuple[bytes | None, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """Append to the partition's open batch (opening one, or another when it is full);
        the futures of the batches the records went into."""
        where = (topic, partition)
        batch = self._open.get(where) or self._start(where)
        # Shielded: a sender that gives up (its request timed out) cancels only its own wait.
        futures = [asyncio.shield(batch.delivered)]
        for key, value in items:
            if batch.builder.append(key=key, value=value, timestamp=None) is None:
                self._hand_over(where, batch)
                batch = self._start(where)
                futures.append(asyncio.shield(batch.delivered))
                batch.builder.append(key=key, value=value, timestamp=None)
        return futures

    def _start(self, where: tuple[str, int]) -> _Open:
        batch = self._open[where] = _Open(
            self.producer.create_batch(), asyncio.get_running_loop().create_future()
        )
        # Nobody may be waiting when it fails (a sender that timed out): not an error then.
        batch.delivered.add_done_callback(lambda f: f.cancelled() or f.exception())
        asyncio.get_running_loop().call_later(self.linger, self._lingered, where, batch)
        return batch

    def _lingered(self, where: tuple[str, int], batch: _Open) -> None:
        """The batch's linger is over: hand it over, or, while the partition's previous batch
        still waits for the producer, keep taking records until that one has gone in."""
        previous = self._handed.get(where)
        if previous is not None and not previous.done():
            previous.add_done_callback(lambda _: self._hand_over(where, batch))
            return
        self._hand_over(where, batch)

    def _hand_over(self, where: tuple[str, int], batch: _Open) -> None:
        """Close the batch to new records and send it after the partition's previous one."""
        if self._open.get(where) is not batch:
            return  # handed over already (it filled up before its linger ran out)
        del self._open[where]
        handed = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._send(where, batch, self._handed.get(where), handed))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        self._handed[where] = handed
        handed.add_done_callback(
            lambda f: self._handed.pop(where, None) if self._handed.get(where) is f else None
        )

    async def _send(
        self,
        where: tuple[str, int],
        batch: _Open,
        previous: asyncio.Future[None] | None,
        handed: asyncio.Future[None],
    ) -> None:
        """Give the batch to the producer once the one before it has been; settle
        ``delivered`` with the broker's answer."""
        try:
            try:
                if previous is not None:
                    await asyncio.wait([previous])
                # Closed, it goes out at once: it has lingered here already, and the producer
                # would keep an open one for its own linger, with the next batch waiting.
                batch.builder.close()
                sent = await self.producer.send_batch(batch.builder, where[0], partition=where[1])
            finally:
                if not handed.done():
                    handed.set_result(None)
            outcome = await sent
        except asyncio.CancelledError:
            batch.delivered.cancel()
            raise
        except Exception as exc:
            if not batch.delivered.done():
                batch.delivered.set_exception(exc)
        else:
            if not batch.delivered.done():
                batch.delivered.set_result(outcome)


class Fenced(Exception):
    """Another member of the group already wrote past this batch (it owned the partition
    meanwhile); nothing of the batch was written and it must be re-read from stored offsets."""


class Unavailable(Exception):
    """Where the batch's effects go (the database) cannot take them now; nothing of the
    batch was written. The loop pauses consumption, backs off and re-reads the batch."""


class Backoff:
    """Bounded exponential backoff: 0.5 s, 1 s, 2 s ... up to ``cap``, reset on success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2.0**self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class BatchHandler(Protocol):
    """What a consumer does; the loop around it owns polling and committing."""

    async def assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Partitions were assigned: restore state; return offsets to resume from, if kept."""
        ...

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions are being taken away: drop their state."""
        ...

    async def handle(self, batch: Batch) -> None:
        """Write the batch's effects durably; return only once they are. Raise ``Fenced``
        (having written nothing) when stored offsets show another member got there first,
        ``Unavailable`` (having written nothing) when the effects cannot be written now."""
        ...


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: AIOKafkaConsumer, handler: BatchHandler) -> None:
        self.consumer = consumer
        self.handler = handler
        # The consumer's positions may be ahead of what the handler's effects durably hold:
        # rewind to its stored offsets before the next batch is written.
        self.unsure = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.handler.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            resume = await self.handler.assigned(set(assigned))
        except Unavailable as exc:
            # The positions are Kafka's committed offsets, which may run ahead of the stored
            # ones (a commit lost with the database): the loop rewinds once it can read them.
            log.warning("cannot read stored offsets at assignment: %s", exc)
            self.unsure = True
            return
        for tp, offset in resume.items():
            self.consumer.seek(tp, offset)
        if resume:
            log.info("resuming %d partitions from offsets kept with their effects", len(resume))


async def _rewind(consumer: AIOKafkaConsumer, handler: BatchHandler, why: str) -> None:
    """Put every owned partition back where its stored effects say it stands (a handler that
    saves every few batches may hold unsaved work for partitions outside this batch); one
    with no stored offset has no stored effects, and is read from its beginning. Raises
    ``Unavailable`` when the stored offsets cannot be read."""
    partitions = set(consumer.assignment())
    kept = await handler.assigned(partitions)
    for tp in partitions:
        if tp in kept:
            consumer.seek(tp, kept[tp])
    if missing := partitions - kept.keys():
        await consumer.seek_to_beginning(*missing)
    log.warning("%s; re-reading %d partitions from their stored offsets", why, len(partitions))


async def _wait_paused(
    consumer: AIOKafkaConsumer, batch: Batch, delay: float, stop: asyncio.Event
) -> None:
    """Put the batch back, pause every partition for ``delay`` seconds while still polling
    (so the group keeps this member and its partitions), then resume."""
    owned = consumer.assignment()
    for tp, records in batch.items():
        if tp in owned and records:
            consumer.seek(tp, records[0].offset)
    consumer.pause(*owned)
    try:
        deadline = asyncio.get_running_loop().time() + delay
        while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
            # Paused partitions yield nothing; the call keeps the poll interval honest.
            await consumer.getmany(timeout_ms=200)
    finally:
        consumer.resume(*consumer.assignment())


async def run_consumer(
    kafka: KafkaSettings,
    *,
    group_id: str,
    topics: Sequence[str],
    handler: BatchHandler,
    stop: asyncio.Event,
    poll_ms: int = 200,
    fetch_max_wait_ms: int | None = None,
    fetch_min_bytes: int = 1,
) -> None:
    """Consume ``topics`` in ``group_id`` until ``stop`` is set, committing after each batch."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=max(kafka.request_timeout_ms, 40_000),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms
        if fetch_max_wait_ms is None
        else fetch_max_wait_ms,
        fetch_min_bytes=fetch_min_bytes,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(kafka.session_timeout_ms // 4, 300),
    )
    listener = _Rebalance(consumer, handler)
    consumer.subscribe(list(topics), listener=listener)
    await consumer.start()
    log.info("consuming %s as group %s", list(topics), group_id)
    backoff = Backoff()
    # Offsets go to the broker for lag monitoring and for where a new member starts; the
    # handler keeps its own. The commit runs beside the next batch rather than before it: a
    # round trip per batch was time the loop sat idle.
    committing: asyncio.Task[None] | None = None
    try:
        while not stop.is_set():
            batch = await _take(consumer, poll_ms, kafka.max_batch_records)
            if not batch:
                continue
            try:
                if listener.unsure:
                    # After the effects' store went away, what was last written may not have
                    # lasted (a commit that did not wait for the disk, lost in a crash): the
                    # stored offsets, not the consumer's positions, say where to go on.
                    await _rewind(consumer, handler, "the store was away")
                    listener.unsure = False
                    continue
                await handler.handle(batch)
            except Fenced:
                await _rewind(consumer, handler, "batch fenced by another group member")
                continue
            except Unavailable as exc:
                listener.unsure = True
                delay = backoff.next()
                log.warning("pausing consumption for %.1f s: %s", delay, exc)
                await _wait_paused(consumer, batch, delay, stop)
                continue
            if backoff.attempt:
                log.info("resumed consumption after %d retries", backoff.attempt)
                backoff.reset()
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
            if committing is not None:
                await committing  # one commit in flight at a time, in order
            committing = asyncio.create_task(_commit(consumer, offsets))
        if committing is not None:
            await committing
    finally:
        if committing is not None and not committing.done():
            committing.cancel()
        await consumer.stop()


async def _take(consumer: AIOKafkaConsumer, poll_ms: int, max_records: int) -> Batch:
    """The next batch, with records of every partition that has some fetched.

    aiokafka drains fetched partitions in the order their fetches came back and keeps a
    partition's fetch (up to ``max_partition_fetch_bytes``) until it is drained, so a batch
    capped at ``max_records`` can be all one busy partition's for as long as that partition
    is behind; the rules engine's roll-up and tickets partitions, a few records a second, then
    waited behind thousands of readings. So after the first take each other partition adds
    what it has fetched, up to an equal share of the cap (a batch stays under twice the cap)."""
    batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    batch = await consumer.getmany(timeout_ms=poll_ms, max_records=max_records)
    if not batch:
        return batch
    others = [tp for tp in consumer.assignment() if tp not in batch]
    share = max(1, max_records // max(1, len(others)))
    for tp in others:
        batch.update(await consumer.getmany(tp, timeout_ms=0, max_records=share))
    return batch


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        # The group rebalanced under us (the partitions may not even be ours any more); the
        # next owner resumes from the last commit and the handler's idempotence absorbs the
        # redelivery.
        log.warning("offset commit refused after rebalance: %s", exc)
