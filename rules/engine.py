"""The live rules engine's state, pure: records of one partition in, what to emit out.

Two stages, so that every indicator scope has exactly one owner while the readings of a
district arrive on many partitions (they are keyed by device):

- ``SourceTask``, one per partition of the readings or tickets topic. It folds records into
  event-time windows with the vectorised core, counts and reports late ones, and closes a
  window once the partition's watermark (highest event time minus the indicator's lateness)
  passes its end. A device-scope window goes through the alert life cycle here; a grid,
  street, district or city window leaves as a mergeable ``WindowPartial`` on the roll-up
  topic, keyed by its scope, followed by a ``SourceMark`` of how far this partition has got.
- ``RollupTask``, one per partition of the roll-up topic. It merges the partials of a window
  from every source partition and closes it once every source's mark has passed its end.
  Duplicates (a source re-emitting after a crash) overwrite themselves or arrive after the
  window closed and are dropped, and merging does not depend on how sources interleave.

Everything a task emits follows from its partition's records in log order (ticks included),
so a task restored from a snapshot and fed the records after it emits what it emitted before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import ValidationError

from rules import core
from rules.alerts import Change
from rules.indicators import Aggregation, Catalogue, Indicator, Profile, Source
from rules.windows import (
    Judge,
    ScopeState,
    advance,
    indicator_value,
    next_due,
    observe,
    value_record,
)
from schemas.alerts import AlertTransition, ScopeLevel
from schemas.base import describe_errors
from schemas.indicator_values import IndicatorValue
from schemas.readings import read_frame
from schemas.rollup import ROLLUP_RECORD, SourceMark, WindowPartial
from schemas.tickets import HotlineTicket

NEVER = np.iinfo(np.int64).min
ZERO_WHEN_EMPTY = (Aggregation.COUNT, Aggregation.SUM)  # a window with nothing in it is 0
CITY = "city"
W = TypeVar("W")


class Definitions:
    """The indicators in force: normal and emergency judges, and which records feed which."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        emergency_districts: frozenset[str] = frozenset(),
        city_emergency: bool = False,
        stale_factor: float = 3.0,
    ) -> None:
        self.catalogue = catalogue
        self.normal = {c: Judge.of(i, stale_factor) for c, i in catalogue.by_code.items()}
        self.emergency = {
            c: Judge.of(i.with_profile(Profile.EMERGENCY), stale_factor)
            for c, i in catalogue.by_code.items()
        }
        self.emergency_districts = emergency_districts
        self.city_emergency = city_emergency

    def judge(self, code: str, district: str | None) -> Judge:
        """The judge for a scope, emergency (急) when its district or the city is switched."""
        if self.city_emergency or (district is not None and district in self.emergency_districts):
            return self.emergency[code]
        return self.normal[code]

    def fed_by(self, source: Source, selector: str) -> list[Indicator]:
        if source is Source.SENSOR:
            return self.catalogue.by_metric.get(selector, [])
        return self.catalogue.by_ticket_category.get(selector, [])


@dataclass(slots=True)
class Acc:
    """A window's mergeable summary."""

    count: int
    total: int  # micro-units (core.MICRO): exact, so batches and sources merge in any order
    low: float
    high: float
    first_ts: int
    first: float
    last_ts: int
    last: float

    def __reduce__(self) -> tuple[type[Acc], tuple[int, int, float, float, int, float, int, float]]:
        # Snapshots hold thousands of these (one per open window and scope): as constructor
        # arguments they pickle in 2/5 of the time of the default slots state, and smaller.
        # Snapshots pickled the default way still load.
        return Acc, (
            self.count,
            self.total,
            self.low,
            self.high,
            self.first_ts,
            self.first,
            self.last_ts,
            self.last,
        )

    def merge(self, other: Acc) -> None:
        self.add(other.count, other.total, other.low, other.high, other.first_ts, other.first,
                 other.last_ts, other.last)  # fmt: skip

    def add(
        self, count: int, total: int, low: float, high: float, first_ts: int, first: float,
        last_ts: int, last: float,
    ) -> None:  # fmt: skip
        """Merge a partial given by its fields (no Acc made for it: a device-level indicator
        merges about one a reading)."""
        self.count += count
        self.total += total
        if low < self.low:
            self.low = low
        if high > self.high:
            self.high = high
        if first_ts < self.first_ts or (first_ts == self.first_ts and first < self.first):
            self.first_ts, self.first = first_ts, first
        if last_ts > self.last_ts or (last_ts == self.last_ts and last > self.last):
            self.last_ts, self.last = last_ts, last

    def value(self, aggregation: Aggregation) -> float:
        match aggregation:
            case Aggregation.LAST:
                return self.last
            case Aggregation.MEAN:
                return self.total / self.count / core.MICRO
            case Aggregation.MIN:
                return self.low
            case Aggregation.MAX:
                return self.high
            case Aggregation.SUM:
                return self.total / core.MICRO
            case Aggregation.COUNT:
                return float(self.count)
            case Aggregation.RATE_OF_CHANGE:
                hours = (self.last_ts - self.first_ts) / core.MS_PER_HOUR
                return (self.last - self.first) / hours if hours > 0 else 0.0

    def partial(
        self, indicator: Indicator, scope_id: str, district: str | None, start: int, source: str
    ) -> WindowPartial:
        return WindowPartial(
            indicator=indicator.code,
            scope_level=indicator.scope_level,
            scope_id=scope_id,
            district=district,
            window_start_ms=start,
            source=source,
            count=self.count,
            total=self.total,
            low=self.low,
            high=self.high,
            first_ts=self.first_ts,
            first=self.first,
            last_ts=self.last_ts,
            last=self.last,
        )

    @classmethod
    def of(cls, p: WindowPartial) -> Acc:
        return cls(p.count, p.total, p.low, p.high, p.first_ts, p.first, p.last_ts, p.last)


Closed = tuple[Judge, str, int, float, int]  # judge, scope, window start ms, value, samples


@dataclass(slots=True)
class Output:
    """What a batch makes a task emit."""

    changes: list[Change] = field(default_factory=list)  # alert transitions
    closed: list[Closed] = field(default_factory=list)  # device-scope windows closed
    partials: list[WindowPartial] = field(default_factory=list)
    marks: list[SourceMark] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (record index, reason)
    late: int = 0

    @property
    def transitions(self) -> list[AlertTransition]:
        """The record of each alert transition, built when asked for, as ``values``."""
        return [change.model() for change in self.changes]

    def transition_records(self) -> list[tuple[bytes, bytes]]:
        """``transitions`` as the keys and bytes the consumer sends, built without the models."""
        return [change.record() for change in self.changes]

    @property
    def values(self) -> list[IndicatorValue]:
        """The record of each closed window. Built when asked for: a window close makes
        thousands, and the consumer sends the batch's alerts before it spends that time."""
        return [indicator_value(*closed) for closed in self.closed]

    def value_records(self) -> list[tuple[bytes, bytes]]:
        """``values`` as the keys and bytes the consumer sends, built without the models."""
        return [value_record(*closed) for closed in self.closed]


@dataclass(slots=True)
class Scopes:
    """One indicator's scopes on one task: life cycles, and when time next changes one."""

    states: dict[str, ScopeState] = field(default_factory=dict)
    districts: dict[str, str | None] = field(default_factory=dict)
    wake_ms: int | None = None  # earliest due time over all states; None: nothing pending

    def close(
        self,
        defs: Definitions,
        code: str,
        scope_id: str,
        start: int,
        value: float,
        samples: int,
        out: Output,
    ) -> None:
        judge = defs.judge(code, self.districts.get(scope_id))
        state = self.states.get(scope_id)
        if state is None:
            state = self.states[scope_id] = ScopeState()
        zero = judge.indicator.aggregation in ZERO_WHEN_EMPTY and state.value != 0
        if zero and state.last_end_ms is not None and state.last_end_ms < start:
            self.close(defs, code, scope_id, state.last_end_ms, 0.0, 0, out)  # the gap counts 0
        observe(judge, scope_id, state, start, value, out.changes)
        out.closed.append((judge, scope_id, start, value, samples))
        self._wake(self._due(judge, state))

    @staticmethod
    def _due(judge: Judge, state: ScopeState) -> int | None:
        """When time alone next changes this scope; for counts and sums that includes the
        end of the window after the last one with data, which counts zero."""
        due = next_due(judge, state)
        if judge.indicator.aggregation in ZERO_WHEN_EMPTY and state.value != 0:
            assert state.last_end_ms is not None
            empty_end = state.last_end_ms + judge.window_ms
            due = empty_end if due is None else min(due, empty_end)
        return due

    def advance(self, defs: Definitions, code: str, clock: int, out: Output) -> None:
        """Let time pass to ``clock`` for every scope with something due by then."""
        if self.wake_ms is None or self.wake_ms > clock:
            return
        self.wake_ms = None
        for scope_id, state in self.states.items():
            judge = defs.judge(code, self.districts.get(scope_id))
            due = self._due(judge, state)
            if due is not None and due <= clock:
                if judge.indicator.aggregation in ZERO_WHEN_EMPTY and state.value != 0:
                    assert state.last_end_ms is not None
                    if state.last_end_ms + judge.window_ms <= clock:  # no tickets: a zero
                        self.close(defs, code, scope_id, state.last_end_ms, 0.0, 0, out)
                advance(judge, scope_id, state, clock, out.changes)
                due = self._due(judge, state)
            self._wake(due)

    def _wake(self, due: int | None) -> None:
        if due is not None and (self.wake_ms is None or due < self.wake_ms):
            self.wake_ms = due


def _shape(indicator: Indicator) -> tuple[int, str]:
    return indicator.window_seconds, indicator.aggregation.value


def _reshape(defs: Definitions, shapes: dict[str, tuple[int, str]], windows: dict[str, Any]
             ) -> None:  # fmt: skip
    """A definition whose window or aggregation changed (hot reload) starts its open windows
    afresh: a half-filled window of the old shape means nothing under the new one."""
    for code, indicator in defs.catalogue.by_code.items():
        shape = _shape(indicator)
        if shapes.get(code, shape) != shape:
            windows.pop(code, None)
        shapes[code] = shape


# Where an observation lies, as the scope levels between device and city read it.
Where = tuple[str | None, str | None, str | None]
_AREAS = (ScopeLevel.GRID, ScopeLevel.STREET, ScopeLevel.DISTRICT)  # a Where's fields
_AREA = {level: i for i, level in enumerate(_AREAS)}
_DISTRICT = _AREA[ScopeLevel.DISTRICT]
_NOWHERE: Where = (None, None, None)


def frame_places(places: Mapping[str, list[Any]]) -> list[Where]:
    """A checked frame's places as ``Where`` tuples (made by zip in C: a dict a place, as
    ``place_list`` makes, was a sixth of the engine's CPU at 150,000 readings/s)."""
    count = len(next(iter(places.values()))) if places else 0
    absent = [None] * count
    return list(zip(*(places.get(level.value, absent) for level in _AREAS), strict=True))


MARK_EVERY_MS = 1_000  # event time between marks that close no roll-up window


@dataclass(slots=True)
class _Column:
    """The observations of one selector (a reading's metric, a ticket's category) in a batch,
    in log order, column by column: cheaper to fill and to turn into arrays than an object
    per observation."""

    pos: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    device: list[str | None] = field(default_factory=list)
    location: list[Where] = field(default_factory=list)

    def add(self, pos: int, ts: int, value: float, device: str | None, where: Where) -> None:
        self.pos.append(pos)
        self.ts.append(ts)
        self.value.append(value)
        self.device.append(device)
        self.location.append(where)

    @classmethod
    def merged(cls, columns: list[_Column]) -> _Column:
        """Several selectors' observations (an indicator fed by several), back in log order."""
        # By record alone (a sort is stable): a frame's readings share one, and their
        # locations do not compare.
        rows = sorted(
            (row for c in columns for row in zip(c.pos, c.ts, c.value, c.device, c.location,
                                                 strict=True)),
            key=itemgetter(0),
        )  # fmt: skip
        out = cls()
        for row in rows:
            out.add(*row)
        return out

    def scopes(self, level: ScopeLevel) -> list[str | None]:
        """Each observation's scope at ``level``; None where it has none."""
        match level:
            case ScopeLevel.DEVICE:
                return self.device
            case ScopeLevel.CITY:
                return [CITY] * len(self.pos)
            case _:
                i = _AREA[level]
                return [where[i] for where in self.location]


def decode_tick(raw: bytes) -> int:
    """Event time carried by a tick record."""
    data = orjson.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("tick"), int):
        raise ValueError("tick: expected {'tick': <epoch ms>}")
    return int(data["tick"])


def encode_tick(ts_ms: int) -> bytes:
    return orjson.dumps({"tick": ts_ms})


@dataclass(slots=True)
class SourceTask:
    """Stage 1: one partition of the readings (or tickets) topic."""

    topic: str
    partition: int
    partitions: int
    source: Source
    max_ts: int | None = None  # highest event time seen, ticks included
    marked: int | None = None  # the highest max_ts sent as a mark
    # indicator -> window start -> scope -> the open window
    windows: dict[str, dict[int, dict[str, Acc]]] = field(default_factory=dict)
    districts: dict[str, dict[str, str | None]] = field(default_factory=dict)
    scopes: dict[str, Scopes] = field(default_factory=dict)  # device-scope indicators
    late: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.topic}:{self.partition}"

    def process(self, defs: Definitions, records: Sequence[tuple[bytes, bool]]) -> Output:
        """Fold a batch (raw value, is-tick) in log order into the windows; close what can be."""
        out = Output()
        _reshape(defs, self.shapes, self.windows)
        stamps = np.full(len(records), NEVER, dtype=np.int64)
        columns = self._decode(records, stamps, out)
        seen = np.empty(len(records), dtype=np.int64)  # highest event time before each record
        if len(records):
            seen[0] = NEVER if self.max_ts is None else self.max_ts
            if len(records) > 1:
                np.maximum.accumulate(stamps[:-1], out=seen[1:])
                np.maximum(seen[1:], seen[0], out=seen[1:])
            top = int(max(seen[-1], stamps[-1]))
            self.max_ts = None if top == NEVER else top
        fed: dict[str, list[_Column]] = {}
        for selector, column in columns.items():
            for indicator in defs.fed_by(self.source, selector):
                fed.setdefault(indicator.code, []).append(column)
        for code, found in fed.items():
            column = found[0] if len(found) == 1 else _Column.merged(found)
            self._fold(defs.catalogue.by_code[code], column, seen, out)
        if self.max_ts is not None:
            for indicator in defs.catalogue.by_code.values():
                if indicator.source is self.source:
                    self._close(defs, indicator, out)
            ticked = any(tick for _, tick in records)
            if self._mark_due(defs, ticked):
                out.marks.append(
                    SourceMark(
                        topic=self.topic,
                        partition=self.partition,
                        partitions=self.partitions,
                        max_ts_ms=self.max_ts,
                    )
                )
                self.marked = self.max_ts
        return out

    def _mark_due(self, defs: Definitions, ticked: bool) -> bool:
        """Whether the roll-up stage must hear how far this partition's event time has come.

        A mark goes to every roll-up partition, and the broker keeps each send as an object
        it lists on every fetch: one per batch was most of what the roll-up topic held. So a
        mark is sent when time has passed the close of some roll-up window (the roll-up
        stage closes it as soon as the last partition says so), when a tick moved time on
        (a quiet partition), and otherwise once per ``MARK_EVERY_MS`` of event time (for the
        for-durations and staleness the roll-up stage times by the same marks). What the
        roll-up stage emits is stamped with event time and does not depend on which marks
        it got; only when it emits does."""
        assert self.max_ts is not None
        now, last = self.max_ts, self.marked
        if last is None:
            return True
        if now <= last:
            return False
        if ticked or now - last >= MARK_EVERY_MS:
            return True
        for indicator in defs.catalogue.by_code.values():
            if indicator.source is self.source and indicator.scope_level is not ScopeLevel.DEVICE:
                window_ms = indicator.window_seconds * 1000
                lateness = indicator.allowed_lateness_seconds * 1000
                if (now - lateness) // window_ms != (last - lateness) // window_ms:
                    return True
        return False

    def _decode(
        self, records: Sequence[tuple[bytes, bool]], stamps: core.I64, out: Output
    ) -> dict[str, _Column]:
        found: dict[str, _Column] = {}
        sensor = self.source is Source.SENSOR
        for pos, (raw, tick) in enumerate(records):
            try:
                if tick:
                    stamps[pos] = decode_tick(raw)
                elif sensor:
                    frame = read_frame(raw)
                    places = frame_places(frame["places"])  # type: ignore[arg-type]
                    ms = [us // 1000 for us in frame["ts"]]
                    for device, metric, ts, value, place in zip(
                        frame["device_id"], frame["metric"], ms, frame["value"], frame["place"],
                        strict=True,
                    ):  # fmt: skip
                        column = found.get(metric)
                        if column is None:
                            column = found[metric] = _Column()
                        column.add(
                            pos, ts, value, device, _NOWHERE if place is None else places[place]
                        )
                    stamps[pos] = max(ms)
                else:
                    t = HotlineTicket.model_validate_json(raw)
                    ts = int(t.reported_at.timestamp() * 1000)
                    where = (t.location.grid, t.location.street, t.location.district)
                    column = found.get(t.category)
                    if column is None:
                        column = found[t.category] = _Column()
                    column.add(pos, ts, 1.0, None, where)
                    stamps[pos] = ts
            except ValidationError as exc:
                out.rejected.append((pos, describe_errors(exc)))
            except ValueError as exc:
                out.rejected.append((pos, str(exc)))
        return found

    def _fold(
        self,
        indicator: Indicator,
        column: _Column,
        seen: core.I64,
        out: Output,
    ) -> None:
        code = indicator.code
        window_ms = indicator.window_seconds * 1000
        of = column.scopes(indicator.scope_level)
        # Whole columns at once: item-by-item stores into numpy arrays cost more than this.
        ts = np.array(column.ts, dtype=np.int64)
        value = np.array(column.value, dtype=np.float64)
        pos = np.array(column.pos, dtype=np.int64)
        if None in of:  # observations without this scope level count for none of it
            keep = np.array([s is not None for s in of], dtype=np.bool_)
            ts, value, pos = ts[keep], value[keep], pos[keep]
            located = [(s, w) for s, w in zip(of, column.location, strict=True) if s is not None]
            scope_ids: list[str] = [s for s, _ in located]
            where: list[Where] = [w for _, w in located]
        else:
            scope_ids, where = of, column.location  # type: ignore[assignment]
        names = list(dict.fromkeys(scope_ids))  # first seen first
        index = {name: i for i, name in enumerate(names)}
        scope = np.array([index[s] for s in scope_ids], dtype=np.int64)
        if indicator.scope_level is not ScopeLevel.CITY:
            # The district each scope lies in, as its latest observation in the log says.
            self.districts.setdefault(code, {}).update(
                zip(scope_ids, [w[_DISTRICT] for w in where], strict=True)
            )
        before = seen[pos]
        ends = core.window_starts(ts, window_ms) + window_ms
        late = (before != NEVER) & (ends <= before - indicator.allowed_lateness_seconds * 1000)
        if late.any():
            count = int(late.sum())
            out.late += count
            self.late[code] = self.late.get(code, 0) + count
            keep = ~late
            scope, ts, value = scope[keep], ts[keep], value[keep]
        p = core.partials(scope, ts, value, window_ms)
        windows = self.windows.setdefault(code, {})
        # As Python numbers in one go per column: a numpy scalar read per field cost ~1 us a
        # partial, and a device-level indicator has about one partial a reading.
        for s, start, count, total, low, high, first_ts, first, last_ts, last in zip(
            p.scope.tolist(), p.start.tolist(), p.count.tolist(), p.total.tolist(),
            p.low.tolist(), p.high.tolist(), p.first_ts.tolist(), p.first.tolist(),
            p.last_ts.tolist(), p.last.tolist(), strict=True,
        ):  # fmt: skip
            scope_id = names[s]
            group = windows.get(start)
            if group is None:
                group = windows[start] = {}
            found = group.get(scope_id)
            if found is None:
                group[scope_id] = Acc(count, total, low, high, first_ts, first, last_ts, last)
            else:
                found.add(count, total, low, high, first_ts, first, last_ts, last)

    def _close(self, defs: Definitions, indicator: Indicator, out: Output) -> None:
        assert self.max_ts is not None
        code = indicator.code
        window_ms = indicator.window_seconds * 1000
        watermark = self.max_ts - indicator.allowed_lateness_seconds * 1000
        closing = _closing(self.windows.get(code, {}), watermark - window_ms)
        districts = self.districts.get(code, {})
        if indicator.scope_level is ScopeLevel.DEVICE:
            scopes = self.scopes.get(code)
            if scopes is None:
                scopes = self.scopes[code] = Scopes()
            scopes.districts = districts
            for scope_id, start, acc in closing:
                value = acc.value(indicator.aggregation)
                scopes.close(defs, code, scope_id, start, value, acc.count, out)
            scopes.advance(defs, code, watermark, out)
            return
        for scope_id, start, acc in closing:
            out.partials.append(
                acc.partial(indicator, scope_id, districts.get(scope_id), start, self.name)
            )


@dataclass(slots=True)
class RollupTask:
    """Stage 2: one partition of the roll-up topic, owner of the grid..city scopes keyed to it."""

    topics: dict[Source, str]  # the source topic of each kind of indicator
    marks: dict[str, int] = field(default_factory=dict)  # 'topic:partition' -> max event time
    partitions: dict[str, int] = field(default_factory=dict)  # topic -> partitions
    # indicator -> window start -> scope -> source partition -> its partial
    windows: dict[str, dict[int, dict[str, dict[str, Acc]]]] = field(default_factory=dict)
    districts: dict[str, dict[str, str | None]] = field(default_factory=dict)
    scopes: dict[str, Scopes] = field(default_factory=dict)
    duplicates: int = 0
    shapes: dict[str, tuple[int, str]] = field(default_factory=dict)

    def high_water(self, topic: str) -> int | None:
        """Event time every partition of ``topic`` has reached; None until all have reported."""
        n = self.partitions.get(topic)
        if n is None:
            return None
        marks = [self.marks.get(f"{topic}:{p}") for p in range(n)]
        return None if any(m is None for m in marks) else min(m for m in marks if m is not None)

    def _watermark(self, indicator: Indicator) -> int | None:
        top = self.high_water(self.topics[indicator.source])
        return None if top is None else top - indicator.allowed_lateness_seconds * 1000

    def process(self, defs: Definitions, records: Iterable[bytes]) -> Output:
        out = Output()
        _reshape(defs, self.shapes, self.windows)
        for pos, raw in enumerate(records):
            try:
                record = ROLLUP_RECORD.validate_json(raw)
            except ValidationError as exc:
                out.rejected.append((pos, describe_errors(exc)))
                continue
            if isinstance(record, SourceMark):
                name = f"{record.topic}:{record.partition}"
                self.marks[name] = max(self.marks.get(name, record.max_ts_ms), record.max_ts_ms)
                self.partitions[record.topic] = record.partitions
                continue
            indicator = defs.catalogue.by_code.get(record.indicator)
            if indicator is None:
                continue  # a definition withdrawn since
            watermark = self._watermark(indicator)
            end = record.window_start_ms + indicator.window_seconds * 1000
            if watermark is not None and end <= watermark:
                self.duplicates += 1  # re-sent after its window closed here
                continue
            windows = self.windows.setdefault(indicator.code, {})
            scopes = windows.setdefault(record.window_start_ms, {})
            scopes.setdefault(record.scope_id, {})[record.source] = Acc.of(record)
            self.districts.setdefault(indicator.code, {})[record.scope_id] = record.district
        for indicator in defs.catalogue.by_code.values():
            if indicator.scope_level is not ScopeLevel.DEVICE:
                self._close(defs, indicator, out)
        return out

    def _close(self, defs: Definitions, indicator: Indicator, out: Output) -> None:
        watermark = self._watermark(indicator)
        if watermark is None:
            return
        code = indicator.code
        window_ms = indicator.window_seconds * 1000
        closing = _closing(self.windows.get(code, {}), watermark - window_ms)
        scopes = self.scopes.get(code)
        if scopes is None:
            scopes = self.scopes[code] = Scopes()
        scopes.districts = self.districts.setdefault(code, {})
        for scope_id, start, parts in closing:
            merged: Acc | None = None
            for source in sorted(parts):
                acc = parts[source]
                if merged is None:
                    merged = Acc(
                        acc.count,
                        acc.total,
                        acc.low,
                        acc.high,
                        acc.first_ts,
                        acc.first,
                        acc.last_ts,
                        acc.last,
                    )
                else:
                    merged.merge(acc)
            assert merged is not None
            value = merged.value(indicator.aggregation)
            scopes.close(defs, code, scope_id, start, value, merged.count, out)
        scopes.advance(defs, code, watermark, out)


def _closing(windows: dict[int, dict[str, W]], last_start: int) -> Iterator[tuple[str, int, W]]:
    """Take out the windows that start at or before ``last_start``, by start, then scope."""
    for start in sorted(s for s in windows if s <= last_start):
        group = windows.pop(start)
        for scope_id in sorted(group):
            yield scope_id, start, group[scope_id]


def replay(
    defs: Definitions,
    logs: Mapping[tuple[str, int], Sequence[tuple[bytes, bool]]],
    partitions: dict[str, int],
    sources: dict[Source, str],
) -> Output:
    """Everything the engine emits for whole partition logs, in one pass and one process: the
    reference the live engine's output (any batching, crashes, group members) must equal."""
    total = Output()
    rollup = RollupTask(topics=sources)
    feed: list[bytes] = []
    for (topic, partition), records in sorted(logs.items()):
        source = next(kind for kind, name in sources.items() if name == topic)
        task = SourceTask(topic, partition, partitions[topic], source)
        out = task.process(defs, records)
        total.changes += out.changes
        total.closed += out.closed
        total.late += out.late
        feed += [p.model_dump_json().encode() for p in out.partials]
        feed += [m.model_dump_json().encode() for m in out.marks]
    out = rollup.process(defs, feed)
    total.changes += out.changes
    total.closed += out.closed
    return total
