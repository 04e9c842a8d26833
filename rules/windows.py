"""Alert life cycle of one indicator scope: closed windows and the passing of event time in,
transitions out. Pure.

A window's value becomes known when the window closes (at its end) and holds until the next
window with data closes. Time moves by the event-time watermark, so an alert escalates or
resolves when its duration runs out even if no new reading arrives:

- The alert stands at level L once the value has been at L or above for ``for_seconds``
  (counted from the start of the first window of the run, never before that window closed).
  It fires at the lowest such level and escalates as higher ones come due.
- A value below the current level de-escalates at once; inside the hysteresis band, to the
  lowest level (a value past the clear threshold resolves it instead, see below).
- It resolves once the value has stayed past the clear threshold (lowest threshold minus
  hysteresis) for ``clear_for_seconds``; values inside the hysteresis band keep it open.
- Staleness: no window with data for ``window + expected_every x factor`` after the last one
  opens a no-data alert (and cancels pending runs); the next window with data resolves it.

Every change is stamped with the event time it happened at (a window end, or the moment a
duration ran out), never with when it was computed, so the result does not depend on how the
stream was cut into batches: ``advance`` to t1 then t2 equals ``advance`` to t2.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache

import orjson

from rules.alerts import Change, OpenAlert, alert_id_for, at_ms, instant_text
from rules.indicators import Direction, Indicator
from schemas.alerts import Condition, Level, TransitionKind
from schemas.base import uuid_text
from schemas.indicator_values import IndicatorValue, value_id_hex, value_id_hex_of


@dataclass(frozen=True, slots=True)
class Judge:
    """An indicator's thresholds and durations, prepared for evaluation."""

    indicator: Indicator
    levels: tuple[Level, ...]
    thresholds: tuple[float, ...]
    window_ms: int
    for_ms: int
    clear_for_ms: int
    stale_ms: int | None  # no data for this long after the last window's end: no-data alert
    below: bool  # thresholds apply downwards
    bounds: tuple[float, ...]  # ascending keys for ``rank``: the thresholds, negated when below
    scope: str  # 'indicator|scope level|', which a value's key and id begin with
    level_names: tuple[str, ...]  # the levels as their records write them

    @classmethod
    def of(cls, indicator: Indicator, stale_factor: float | None = 3.0) -> Judge:
        pairs = indicator.thresholds.defined()
        window_ms = indicator.window_seconds * 1000
        every = indicator.expected_every_seconds
        stale = (
            None
            if every is None or stale_factor is None
            else window_ms + int(every * stale_factor * 1000)
        )
        return cls(
            indicator=indicator,
            levels=tuple(level for level, _ in pairs),
            thresholds=tuple(value for _, value in pairs),
            window_ms=window_ms,
            for_ms=indicator.for_seconds * 1000,
            clear_for_ms=indicator.clear_for_seconds * 1000,
            stale_ms=stale,
            below=indicator.direction is Direction.BELOW,
            bounds=tuple(-t if indicator.direction is Direction.BELOW else t for _, t in pairs),
            scope=f"{indicator.code}|{indicator.scope_level.value}|",
            level_names=tuple(level.value for level, _ in pairs),
        )

    def rank(self, value: float) -> int:
        """0 when normal, else 1.. the highest defined level the value reaches."""
        if value != value:  # NaN never breaches
            return 0
        if self.below:
            return bisect_right(self.bounds, -value)
        return bisect_right(self.bounds, self.indicator.severity(value))


@dataclass(slots=True)
class ScopeState:
    """What one indicator scope remembers between windows."""

    open: OpenAlert | None = None  # the threshold alert
    no_data: OpenAlert | None = None  # the staleness alert
    value: float = 0.0  # the latest closed window's value, held until the next
    rank: int = 0  # its level rank
    due: list[int | None] = field(default_factory=list)  # per rank r at [r-1]: when L_r is due
    clear_due: int | None = None
    last_end_ms: int | None = None  # end of the latest window with data

    def idle(self) -> bool:
        """Nothing open and nothing pending: normal windows change nothing."""
        return self.open is None and self.rank == 0 and self.clear_due is None


@lru_cache(maxsize=4096)
def _window(start_ms: int, window_ms: int) -> tuple[datetime, datetime, str, str, str]:
    """A window's start, end, start in ISO 8601, and start and end as the contract writes them
    in JSON: shared by every scope closing it."""
    start, end = at_ms(start_ms), at_ms(start_ms + window_ms)
    return start, end, start.isoformat(), instant_text(start), instant_text(end)


def indicator_value(
    judge: Judge, scope_id: str, start_ms: int, value: float, samples: int
) -> IndicatorValue:
    """The record of one closed window (topic indicator-values.v1)."""
    indicator = judge.indicator
    start, end, start_iso, _, _ = _window(start_ms, judge.window_ms)
    rank = judge.rank(value)
    return IndicatorValue(
        value_id=value_id_hex(indicator.code, indicator.scope_level, scope_id, start_iso),
        indicator=indicator.code,
        scope_level=indicator.scope_level,
        scope_id=scope_id,
        window_start=start,
        window_end=end,
        value=value,
        samples=samples,
        level=judge.levels[rank - 1] if rank else None,
    )


def value_record(
    judge: Judge, scope_id: str, start_ms: int, value: float, samples: int
) -> tuple[bytes, bytes]:
    """``indicator_value`` as the key and JSON bytes it is sent with, written straight from
    the window: the engine makes one per closed window, and building and serialising the model
    cost it a fifth of its time. tests/unit/test_windows.py holds the two byte for byte."""
    indicator = judge.indicator
    _, _, start_iso, start_text, end_text = _window(start_ms, judge.window_ms)
    if not math.isfinite(value):
        raise ValueError(f"{indicator.code} at {scope_id}: the window's value is {value}")
    rank = judge.rank(value)
    key = judge.scope + scope_id
    h = value_id_hex_of(f"{key}|{start_iso}")
    body = {
        "value_id": uuid_text(h),
        "indicator": indicator.code,
        "scope_level": indicator.scope_level,
        "scope_id": scope_id,
        "window_start": start_text,
        "window_end": end_text,
        "value": value,
        "samples": samples,
        "level": judge.level_names[rank - 1] if rank else None,
    }
    return key.encode(), orjson.dumps(body)


def _rank_of(alert: OpenAlert | None, judge: Judge) -> int:
    if alert is None or alert.level is None:
        return 0
    return judge.levels.index(alert.level) + 1


def observe(
    judge: Judge,
    scope_id: str,
    state: ScopeState,
    start_ms: int,
    value: float,
    out: list[Change],
) -> None:
    """Apply one closed window (windows of a scope in event-time order); append transitions."""
    end = start_ms + judge.window_ms
    rank = judge.rank(value)
    if rank == 0 and state.no_data is None and state.idle():
        # Most windows of a city are normal: nothing open, nothing pending, nothing to start.
        last = state.last_end_ms
        if judge.stale_ms is None or last is None or last + judge.stale_ms >= end:
            state.last_end_ms, state.value = end, value
            return
    advance(judge, scope_id, state, end - 1, out)
    indicator = judge.indicator
    if state.no_data is not None:
        back = replace(state.no_data, seq=state.no_data.seq + 1)
        out.append(
            Change(
                indicator,
                scope_id,
                back,
                TransitionKind.RESOLVED,
                None,
                None,
                value,
                None,
                end,
                Condition.NO_DATA,
            )
        )
        state.no_data = None
    state.last_end_ms = end
    state.value, state.rank = value, rank
    if len(state.due) != len(judge.levels):
        state.due = [None] * len(judge.levels)
    due = state.due
    for r in range(len(due)):
        if r < rank:
            if due[r] is None:
                due[r] = max(start_ms + judge.for_ms, end)
        else:
            due[r] = None
    alert = state.open
    if alert is not None:
        current = _rank_of(alert, judge)
        if rank > 0:
            alert = replace(alert, occurrences=alert.occurrences + 1)
            state.open = alert
            state.clear_due = None
        elif indicator.clears(value):
            if state.clear_due is None:
                state.clear_due = max(start_ms + judge.clear_for_ms, end)
        else:
            state.clear_due = None
        # Down to the value's level at once; inside the hysteresis band, down to the lowest
        # level. A value past the clear threshold leaves the level alone: it resolves instead.
        to = rank if rank > 0 else (0 if state.clear_due is not None else 1)
        if 0 < to < current:
            changed = state.open = replace(alert, level=judge.levels[to - 1], seq=alert.seq + 1)
            out.append(
                Change(
                    indicator,
                    scope_id,
                    changed,
                    TransitionKind.LEVEL_CHANGED,
                    alert.level,
                    changed.level,
                    value,
                    judge.thresholds[to - 1],
                    end,
                )
            )
    advance(judge, scope_id, state, end, out)


def _at_or_before(due: int | None, when: int) -> bool:
    return due is not None and due <= when


def next_due(judge: Judge, state: ScopeState) -> int | None:
    """The earliest event time at which time alone changes this scope, if any."""
    best: int | None = None
    if state.rank:
        for due in state.due[_rank_of(state.open, judge) : state.rank]:
            if due is not None and (best is None or due < best):
                best = due
    clear = state.clear_due
    if state.open is not None and clear is not None and (best is None or clear < best):
        best = clear
    if judge.stale_ms is not None and state.no_data is None and state.last_end_ms is not None:
        stale = state.last_end_ms + judge.stale_ms
        if best is None or stale < best:
            best = stale
    return best


def advance(
    judge: Judge, scope_id: str, state: ScopeState, clock_ms: int, out: list[Change]
) -> None:
    """Let event time pass up to ``clock_ms``: fire, escalate, resolve or go stale as due."""
    indicator = judge.indicator
    while True:
        when = next_due(judge, state)
        if when is None or when > clock_ms:
            return
        current = _rank_of(state.open, judge)
        escalate = [r for r in range(current, state.rank) if _at_or_before(state.due[r], when)]
        if escalate:
            to = max(escalate) + 1
            level, threshold = judge.levels[to - 1], judge.thresholds[to - 1]
            alert = state.open
            if alert is None:
                opened = at_ms(when)
                state.open = OpenAlert(
                    alert_id=alert_id_for(indicator.code, indicator.scope_level, scope_id, opened),
                    opened_at=opened,
                    level=level,
                    seq=1,
                    occurrences=1,
                )
                out.append(
                    Change(
                        indicator,
                        scope_id,
                        state.open,
                        TransitionKind.FIRING,
                        None,
                        level,
                        state.value,
                        threshold,
                        when,
                    )
                )
            else:
                state.open = replace(alert, level=level, seq=alert.seq + 1)
                out.append(
                    Change(
                        indicator,
                        scope_id,
                        state.open,
                        TransitionKind.LEVEL_CHANGED,
                        alert.level,
                        level,
                        state.value,
                        threshold,
                        when,
                    )
                )
        elif state.open is not None and state.clear_due == when:
            closed = replace(state.open, seq=state.open.seq + 1)
            out.append(
                Change(
                    indicator,
                    scope_id,
                    closed,
                    TransitionKind.RESOLVED,
                    closed.level,
                    None,
                    state.value,
                    indicator.clear_threshold,
                    when,
                )
            )
            state.open = None
            state.clear_due = None
        else:  # stale: the feed went quiet
            assert judge.stale_ms is not None
            opened = at_ms(when)
            state.no_data = OpenAlert(
                alert_id=alert_id_for(
                    indicator.code, indicator.scope_level, scope_id, opened, Condition.NO_DATA
                ),
                opened_at=opened,
                level=None,
                seq=1,
                occurrences=1,
            )
            quiet = judge.stale_ms / 1000
            out.append(
                Change(
                    indicator,
                    scope_id,
                    state.no_data,
                    TransitionKind.FIRING,
                    None,
                    None,
                    quiet,
                    quiet,
                    when,
                    Condition.NO_DATA,
                )
            )
            # What was held no longer counts towards any duration.
            state.rank = 0
            state.due = [None] * len(judge.levels)
            state.clear_due = None
