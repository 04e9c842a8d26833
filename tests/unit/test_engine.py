"""The live engine's two stages, pure: roll-up across partitions, lateness, ticks, bad records,
and the promise crash safety rests on: any batching, interleaving, or replay from a snapshot
emits exactly what one pass over the whole logs emits."""

from __future__ import annotations

import copyreg
import io
import itertools
import pickle
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from rules.engine import (
    Definitions,
    Output,
    RollupTask,
    SourceTask,
    encode_tick,
    frame_places,
    replay,
)
from rules.indicators import Catalogue, Indicator, Source
from schemas.alerts import AlertTransition, Condition, ScopeLevel, TransitionKind
from schemas.readings import encode_frame

READINGS, TICKETS = "r", "t"
SOURCES = {Source.SENSOR: READINGS, Source.TICKETS: TICKETS}
Logs = dict[tuple[str, int], list[tuple[bytes, bool]]]
MINUTE = 60_000
T0 = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp() * 1000)


def indicator(**fields: object) -> Indicator:
    base: dict[str, object] = {
        "code": "water.depth",
        "name_zh": "积水",
        "name_en": "Depth",
        "domain": "water",
        "unit": "cm",
        "metric": "depth",
        "aggregation": "max",
        "window_seconds": 60,
        "allowed_lateness_seconds": 60,
        "thresholds": {"blue": 10, "yellow": 20, "orange": 30, "red": 50},
        "hysteresis": 5,
    }
    return Indicator.model_validate({**base, **fields})


def catalogue() -> Catalogue:
    return Catalogue(
        [
            indicator(for_seconds=120, expected_every_seconds=60),
            indicator(code="water.district_depth", scope_level="district", aggregation="mean",
                      thresholds={"blue": 5, "red": 25}, clear_for_seconds=60),
            indicator(code="water.city_peak", scope_level="city", window_seconds=300),
            indicator(code="hotline.flooding", source="tickets", metric=None,
                      ticket_categories=["drainage.waterlogging"], scope_level="district",
                      aggregation="count", window_seconds=600, thresholds={"blue": 3},
                      hysteresis=0),
        ]
    )  # fmt: skip


def frame(*readings: tuple[str, str, int, float]) -> tuple[bytes, bool]:
    """Readings (device, district, epoch ms, value) in one frame, as ingest puts them on the
    topic."""
    n = len(readings)
    return encode_frame(
        [device for device, _, _, _ in readings],
        ["depth"] * n,
        ["cm"] * n,
        [ts * 1000 for _, _, ts, _ in readings],
        [value for _, _, _, value in readings],
        [{"district": d, "street": f"{d}-s", "grid": f"{d}-g"} for _, d, _, _ in readings],
    ), False


def reading(device: str, district: str, ts: int, value: float) -> tuple[bytes, bool]:
    return frame((device, district, ts, value))


def ticket(n: int, district: str, ts: int) -> tuple[bytes, bool]:
    record = {
        "ticket_id": f"00000000-0000-4000-8000-{n:012d}",
        "category": "drainage.waterlogging",
        "description": "路面积水",
        "reported_at": datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat(),
        "location": {"district": district},
    }
    return orjson.dumps(record), False


def tick(ts: int) -> tuple[bytes, bool]:
    return encode_tick(ts), True


def city_logs(seed: int, partitions: int = 3, minutes: int = 90, per_minute: int = 1) -> Logs:
    """Devices keyed to partitions by name, readings ``per_minute`` times a minute in a frame
    a partition (as a gateway's post arrives), some disorder, storms."""
    rng = np.random.default_rng(seed)
    logs: Logs = {(READINGS, p): [] for p in range(partitions)}
    logs[(TICKETS, 0)] = []
    devices = [(f"dev-{i}", f"d{i % 3}") for i in range(12)]
    storm = {d: rng.uniform(0, 60, 4) for d, _ in devices}
    n = 0
    for step in range(minutes * per_minute):
        minute = step // per_minute
        posted: dict[int, list[tuple[str, str, int, float]]] = {}
        for device, district in devices:
            ts = T0 + step * MINUTE // per_minute + int(rng.integers(0, MINUTE // per_minute))
            ts -= int(rng.integers(0, 150_000)) if rng.random() < 0.05 else 0  # late, some too late
            wave = np.sin(minute / 9 + storm[device][0]) * storm[device][1]
            value = float(max(0.0, wave + rng.normal(0, 2)))
            if rng.random() < 0.9 or minute < 5:  # some devices skip minutes
                partition = zlib.crc32(device.encode()) % partitions
                posted.setdefault(partition, []).append((device, district, ts, value))
        for partition, readings in posted.items():
            logs[(READINGS, partition)].append(frame(*readings))
        if rng.random() < 0.3 / per_minute:
            n += 1
            logs[(TICKETS, 0)].append(ticket(n, f"d{n % 3}", T0 + minute * MINUTE))
    end = T0 + (minutes + 30) * MINUTE
    for key in logs:
        logs[key].append(tick(end))
    return logs


def partitions_of(logs: Logs) -> dict[str, int]:
    out: dict[str, int] = {}
    for topic, p in logs:
        out[topic] = max(out.get(topic, 0), p + 1)
    return out


def unique(transitions: list[AlertTransition]) -> dict[object, AlertTransition]:
    seen: dict[object, AlertTransition] = {}
    for t in transitions:
        assert seen.setdefault(t.transition_id, t) == t, "one id, two different records"
    return seen


def live(defs: Definitions, logs: Logs, seed: int, rollups: int = 2) -> Output:
    """Random batches, random interleaving, and crashes back to the last snapshot."""
    rng = np.random.default_rng(seed)
    parts = partitions_of(logs)
    total = Output()
    rollup_logs: list[list[bytes]] = [[] for _ in range(rollups)]

    def run(task: Any, records: list[Any], process: Callable[[Any, list[Any]], Output]) -> None:
        snapshot = (0, pickle.dumps(task))
        i = 0
        while i < len(records):
            k = int(rng.integers(1, 40))
            yield_out = process(task, records[i : i + k])
            i += k
            roll = rng.random()
            if roll < 0.3:
                snapshot = (i, pickle.dumps(task))  # state and offset committed together
            elif roll < 0.4:
                i, task = snapshot[0], pickle.loads(snapshot[1])  # crash: back to the snapshot
            total.changes.extend(yield_out.changes)
            total.closed.extend(yield_out.closed)

    def stage1(task: SourceTask, batch: list[tuple[bytes, bool]]) -> Output:
        out = task.process(defs, batch)
        for partial in out.partials:
            rollup_logs[zlib.crc32(partial.key) % rollups].append(
                partial.model_dump_json().encode()
            )
        for mark in out.marks:
            for log in rollup_logs:
                log.append(mark.model_dump_json().encode())
        return out

    for (topic, p), records in sorted(logs.items(), key=lambda kv: rng.random()):
        source = Source.SENSOR if topic == READINGS else Source.TICKETS
        run(SourceTask(topic, p, parts[topic], source), records, stage1)
    for log in rollup_logs:
        run(RollupTask(topics=SOURCES), [(raw, False) for raw in log],
            lambda task, batch: task.process(defs, [raw for raw, _ in batch]))  # fmt: skip
    return total


@pytest.mark.parametrize(("seed", "per_minute"), [*((s, 1) for s in range(6)), (6, 40), (7, 40)])
def test_batching_interleaving_and_crashes_change_nothing(seed: int, per_minute: int) -> None:
    """Also with readings dense enough (per partition, one every 375 ms) that a batch often
    advances event time too little to be worth a mark."""
    defs = Definitions(catalogue())
    logs = city_logs(seed, minutes=90 if per_minute == 1 else 25, per_minute=per_minute)
    reference = replay(defs, logs, partitions_of(logs), SOURCES)
    got = live(defs, logs, seed)
    assert unique(got.transitions) == unique(reference.transitions)
    assert {v.value_id: v for v in got.values} == {v.value_id: v for v in reference.values}
    levels = {t.scope_level for t in reference.transitions}
    assert {ScopeLevel.DEVICE, ScopeLevel.DISTRICT, ScopeLevel.CITY} <= levels
    assert reference.late > 0


def test_a_district_window_merges_every_partition() -> None:
    defs = Definitions(catalogue())
    logs = {
        (READINGS, 0): [reading("a", "d1", T0 + 1_000, 4.0), reading("b", "d1", T0 + 2_000, 8.0)],
        (READINGS, 1): [reading("c", "d1", T0 + 3_000, 30.0)],
    }
    for key in logs:
        logs[key].append(tick(T0 + 10 * MINUTE))
    out = replay(defs, logs, {READINGS: 2}, SOURCES)
    district = [v for v in out.values if v.indicator == "water.district_depth"]
    assert [(v.scope_id, v.value, v.samples) for v in district] == [("d1", 14.0, 3)]
    city = [v for v in out.values if v.indicator == "water.city_peak"]
    assert [(v.scope_id, v.value) for v in city] == [("city", 30.0)]


def test_a_district_window_waits_for_every_partition() -> None:
    defs = Definitions(catalogue())
    task = RollupTask(topics=SOURCES)
    source = SourceTask(READINGS, 0, 2, Source.SENSOR)
    out = source.process(defs, [reading("a", "d1", T0, 9.0), tick(T0 + 10 * MINUTE)])
    feed = [p.model_dump_json().encode() for p in [*out.partials, *out.marks]]
    assert task.process(defs, feed).values == []  # partition 1 has not spoken yet
    other = SourceTask(READINGS, 1, 2, Source.SENSOR).process(defs, [tick(T0 + 10 * MINUTE)])
    closed = task.process(defs, [m.model_dump_json().encode() for m in other.marks])
    assert {v.indicator for v in closed.values} == {"water.district_depth", "water.city_peak"}


def test_marks_come_when_a_roll_up_window_can_close_and_once_a_second_between() -> None:
    """Marks go to every roll-up partition: not one per batch, but none late for a close."""
    defs = Definitions(catalogue())
    task = SourceTask(READINGS, 0, 1, Source.SENSOR)
    stamps = [T0 + 333 + 250 * i for i in range(2_000)]  # a reading every 250 ms, one a batch
    marked = [
        m.max_ts_ms
        for ts in stamps
        for m in task.process(defs, [reading("a", "d1", ts, 1.0)]).marks
    ]
    assert stamps[0] == marked[0]
    assert all(b - a <= 1_000 for a, b in itertools.pairwise(marked))
    assert len(marked) < len(stamps) / 3
    # The first reading past each roll-up close (window end + lateness) is marked.
    rollups = [i for i in defs.catalogue.by_code.values() if i.scope_level is not ScopeLevel.DEVICE]
    for i in rollups:
        if i.source is Source.SENSOR:
            window, lateness = i.window_seconds * 1000, i.allowed_lateness_seconds * 1000
            for end in range(T0 + lateness + window, stamps[-1], window):
                assert next(ts for ts in stamps if ts >= end) in marked, (i.code, end)
    # A tick (a quiet partition) is marked at once.
    assert [m.max_ts_ms for m in task.process(defs, [tick(stamps[-1] + 10)]).marks] == [
        stamps[-1] + 10
    ]


def test_late_readings_are_counted_and_left_out() -> None:
    defs = Definitions(catalogue())
    task = SourceTask(READINGS, 0, 1, Source.SENSOR)
    out = task.process(
        defs,
        [
            reading("a", "d1", T0 + 5 * MINUTE, 1.0),
            reading("a", "d1", T0 + 10 * MINUTE, 1.0),
            reading("a", "d1", T0 + 30_000, 99.0),  # its window closed at T0 + 2 min
        ],
    )
    assert out.late == 3  # one reading, late for each of the three indicators it feeds
    assert task.late == {"water.depth": 1, "water.district_depth": 1, "water.city_peak": 1}
    assert all(v.value < 99 for v in out.values)


def test_bad_records_are_rejected_with_a_reason_and_the_rest_go_on() -> None:
    defs = Definitions(catalogue())
    task = SourceTask(READINGS, 0, 1, Source.SENSOR)
    out = task.process(
        defs,
        [(b"{not json", False), (b'{"device_id": "x"}', False), (b'{"tick": "soon"}', True),
         reading("a", "d1", T0, 55.0), tick(T0 + 10 * MINUTE)],
    )  # fmt: skip
    assert [pos for pos, _ in out.rejected] == [0, 1, 2]
    assert all(reason for _, reason in out.rejected)
    assert "metric" in out.rejected[1][1]
    assert any(t.level is not None for t in out.transitions)


def test_ticks_alone_move_time_fire_and_raise_no_data() -> None:
    defs = Definitions(catalogue())
    task = SourceTask(READINGS, 0, 1, Source.SENSOR)
    first = task.process(defs, [reading("a", "d1", T0, 35.0)])
    assert first.transitions == []  # the window has not closed yet
    later = task.process(defs, [tick(T0 + 3 * MINUTE), tick(T0 + 10 * MINUTE)])
    device = [t for t in later.transitions if t.indicator == "water.depth"]
    assert [(t.kind, t.condition) for t in device] == [
        (TransitionKind.FIRING, Condition.THRESHOLD),  # 2-minute for-duration ran out
        (TransitionKind.FIRING, Condition.NO_DATA),  # nothing since: 60 s + 3 x 60 s
    ]
    assert device[0].observed_at.timestamp() * 1000 == T0 + 2 * MINUTE
    assert device[1].observed_at.timestamp() * 1000 == T0 + 5 * MINUTE


def test_tickets_count_per_district() -> None:
    defs = Definitions(catalogue())
    logs = {
        (TICKETS, 0): [ticket(i, "d1", T0 + i * 1000) for i in range(4)] + [tick(T0 + 3_600_000)]
    }
    out = replay(defs, logs, {TICKETS: 1}, SOURCES)
    # The next window saw no tickets: it counts zero, and the alert resolves.
    assert [(v.scope_id, v.value, v.samples) for v in out.values] == [
        ("d1", 4.0, 4),
        ("d1", 0.0, 0),
    ]
    assert [t.kind for t in out.transitions] == [TransitionKind.FIRING, TransitionKind.RESOLVED]


def test_emergency_districts_use_the_emergency_thresholds() -> None:
    strict = Catalogue(
        Indicator.model_validate(
            {**i.model_dump(), "emergency": {"thresholds": {"blue": 1}}}
            if i.code == "water.depth"
            else i.model_dump()
        )
        for i in catalogue().by_code.values()
    )
    logs = {(READINGS, 0): [reading("a", "d1", T0, 5.0), reading("b", "d2", T0, 5.0),
                            tick(T0 + 10 * MINUTE)]}  # fmt: skip
    normal = replay(Definitions(strict), logs, {READINGS: 1}, SOURCES)
    assert not [t for t in normal.transitions if t.indicator == "water.depth" and t.level]
    switched = replay(Definitions(strict, emergency_districts=frozenset({"d1"})), logs,
                      {READINGS: 1}, SOURCES)  # fmt: skip
    fired = {t.scope_id for t in switched.transitions if t.indicator == "water.depth" and t.level}
    assert fired == {"a"}


def test_a_reloaded_window_size_starts_open_windows_afresh() -> None:
    task = SourceTask(READINGS, 0, 1, Source.SENSOR)
    task.process(Definitions(catalogue()), [reading("a", "d1", T0 + 1_000, 40.0)])
    wider = Catalogue(
        Indicator.model_validate({**i.model_dump(), "window_seconds": 120})
        if i.code == "water.depth"
        else i
        for i in catalogue().by_code.values()
    )
    out = task.process(Definitions(wider), [tick(T0 + 10 * MINUTE)])
    # The one-minute window holding 40 cm was dropped, not closed as a two-minute one.
    assert not [v for v in out.values if v.indicator == "water.depth"]


def test_saves_are_spread_over_the_commit_interval() -> None:
    """Seven busy tasks, commit every second, the loop asking every 10 ms: each task is saved
    about once a second, one at a time, never two within a seventh of a second."""
    import itertools

    from aiokafka import TopicPartition

    from rules.consumer import due_saves

    tasks = [TopicPartition("readings", p) for p in range(7)]
    snapshot_at = dict.fromkeys(tasks, 0.0)
    saves: list[tuple[float, TopicPartition]] = []
    saved_at = 0.0
    for step in range(1, 1001):
        now = step / 100
        due = due_saves(
            set(tasks), snapshot_at, saved_at=saved_at, tasks=len(tasks), commit=1.0, now=now
        )
        assert len(due) <= 1
        for tp in due:
            saves.append((now, tp))
            snapshot_at[tp] = saved_at = now
    times = [t for t, _ in saves]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1 / 7 - 1e-9
    for tp in tasks:
        mine = [0.0, *(t for t, saved in saves if saved == tp)]
        gaps = [b - a for a, b in itertools.pairwise(mine)]
        assert len(mine) >= 9, (tp, gaps)
        assert max(gaps) < 2.0, (tp, gaps)
        assert all(gap < 1.2 for gap in gaps[1:]), (tp, gaps)  # staggered after the first
    # Between batches (a tick every 5 s dirtying all nine tasks of a quiet engine, the ticker
    # asking every second), every due task goes at once: all are saved before the next tick.
    snapshot_at = dict.fromkeys(tasks, 0.0)
    for second in range(1, 30):
        dirty = set(tasks) if second % 5 == 1 else set()
        due = due_saves(dirty, snapshot_at, saved_at=0, tasks=7, commit=1.0, now=second + 0.5,
                        paced=False)  # fmt: skip
        assert due == dirty, second
        snapshot_at.update(dict.fromkeys(due, second + 0.5))
    # A task with nothing new is not saved; with commit 0, every unsaved task at once.
    assert due_saves(set(), snapshot_at, saved_at=0, tasks=7, commit=1.0, now=99) == set()
    assert due_saves(set(tasks), {}, saved_at=9, tasks=7, commit=0, now=9) == set(tasks)


def test_snapshots_pickled_before_acc_had_a_reduce_still_load() -> None:
    """Snapshots of format 2 were written with the default slots state of each ``Acc``; an
    engine upgraded mid-run loads them as they are (no replay from the partition start)."""
    from rules.engine import Acc

    acc = Acc(3, 4_500_000, 1.0, 2.0, T0, 1.0, T0 + 5_000, 2.0)

    class Before(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is Acc:
                state = {name: getattr(obj, name) for name in Acc.__slots__}
                return copyreg.__newobj__, (Acc,), (None, state)  # type: ignore[attr-defined]
            return NotImplemented

    task = {"water.depth": {T0: {"dev-1": acc}}}
    buffer = io.BytesIO()
    Before(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(task)
    assert buffer.getvalue() != pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(buffer.getvalue()) == task == pickle.loads(pickle.dumps(task))


def test_a_frame_s_places_are_read_as_the_scope_levels_between_device_and_city() -> None:
    places: dict[str, list[Any]] = {
        "lon": [113.2, 113.3],
        "district": ["yuexiu", None],
        "grid": ["g1", "g2"],
    }
    assert frame_places(places) == [("g1", None, "yuexiu"), ("g2", None, None)]
    assert frame_places({}) == []
