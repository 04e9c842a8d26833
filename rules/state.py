"""Engine task snapshots in PostgreSQL, each saved with the offset it has consumed up to.

A save is a compare-and-set on the stored offset: a member that lost a partition and still
tries to save (a zombie) finds the offset moved and is fenced off instead of overwriting."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from typing import cast

from aiokafka import TopicPartition
from psycopg import AsyncConnection

# Bump when a task class changes shape; snapshots of another format are not loaded (the task
# is rebuilt by replaying its partition from the start).
FORMAT = 2  # 2: open windows grouped by start


class Conflict(Exception):
    """Another member saved this task since we loaded it."""


async def load(
    conn: AsyncConnection[tuple[object, ...]], group: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, tuple[int, object | None]]:
    """Stored (next offset, task) per partition; task None when its format is outdated."""
    wanted = list(partitions)
    cur = await conn.execute(
        "SELECT topic, partition, next_offset, state, format FROM rules_state "
        "WHERE consumer_group = %s AND (topic, partition) IN "
        "(SELECT * FROM unnest(%s::text[], %s::int[]))",
        (group, [tp.topic for tp in wanted], [tp.partition for tp in wanted]),
    )
    rows = cast(list[tuple[str, int, int, bytes, int]], await cur.fetchall())
    return {
        TopicPartition(topic, partition): (
            offset,
            pickle.loads(blob) if form == FORMAT else None,  # our own snapshots, from our own table
        )
        for topic, partition, offset, blob, form in rows
    }


def snapshot(task: object) -> bytes:
    """A task's state as it is now."""
    return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)


async def save(
    conn: AsyncConnection[tuple[object, ...]],
    group: str,
    snapshots: Mapping[TopicPartition, tuple[int | None, int, bytes]],
) -> None:
    """Save (expected stored offset, new offset, snapshot) per partition in one transaction;
    raise ``Conflict`` (saving nothing) when any stored offset is not the expected one."""
    async with conn.transaction():
        for tp, (expected, offset, blob) in snapshots.items():
            if expected is None:
                cur = await conn.execute(
                    "INSERT INTO rules_state "
                    "(consumer_group, topic, partition, next_offset, state, format) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (group, tp.topic, tp.partition, offset, blob, FORMAT),
                )
            else:
                cur = await conn.execute(
                    "UPDATE rules_state SET next_offset = %s, state = %s, format = %s, "
                    "saved_at = now() WHERE consumer_group = %s AND topic = %s "
                    "AND partition = %s AND next_offset = %s",
                    (offset, blob, FORMAT, group, tp.topic, tp.partition, expected),
                )
            if cur.rowcount != 1:
                raise Conflict(f"{tp.topic}:{tp.partition} was saved by another member")
