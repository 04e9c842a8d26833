"""Alert life cycle over closed windows: for-duration, escalation, hysteresis clearing.

Pure. The vectorised core (rules/core.py) turns readings into one value per closed window; this
module walks one scope's closed windows in event-time order and emits each transition once,
with the deterministic ids of rules/evaluate.py (so a replay re-emits identical records).

- An alert fires once a level has held for ``for_seconds`` of consecutive windows (a window
  with no breach, or a gap with no data, starts the count again). It opens at the level of the
  window that completes the duration; ``opened_at`` is the end of that window.
- While open, a change of level is emitted at once (escalation and de-escalation).
- It resolves once the value has stayed past the clear threshold (lowest threshold minus
  hysteresis) for ``clear_for_seconds``; values inside the hysteresis band keep it open.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from rules.evaluate import OpenAlert, alert_id_for, transition
from rules.indicators import Indicator
from schemas.alerts import AlertTransition, Level, TransitionKind
from schemas.indicator_values import IndicatorValue, value_id_for


@dataclass(frozen=True, slots=True)
class ScopeState:
    """What one indicator scope remembers between windows."""

    open: OpenAlert | None = None
    breach_since_ms: int | None = None  # start of the run of breaching windows
    clear_since_ms: int | None = None  # start of the run of clearing windows
    last_end_ms: int | None = None  # end of the last closed window seen


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def indicator_value(
    indicator: Indicator, scope_id: str, start_ms: int, value: float, samples: int
) -> IndicatorValue:
    """The record of one closed window (topic indicator-values.v1)."""
    start = _at(start_ms)
    level, _ = indicator.level_for(value)
    return IndicatorValue(
        value_id=value_id_for(indicator.code, indicator.scope_level, scope_id, start),
        indicator=indicator.code,
        scope_level=indicator.scope_level,
        scope_id=scope_id,
        window_start=start,
        window_end=_at(start_ms + indicator.window_seconds * 1000),
        value=value,
        samples=samples,
        level=level,
    )


def step(
    indicator: Indicator, scope_id: str, state: ScopeState, start_ms: int, value: float
) -> tuple[ScopeState, AlertTransition | None]:
    """Apply one closed window (in event-time order) to one scope's state."""
    end_ms = start_ms + indicator.window_seconds * 1000
    contiguous = state.last_end_ms == start_ms
    level, threshold = indicator.level_for(value)
    state = replace(state, last_end_ms=end_ms)

    def emit(
        kind: TransitionKind, alert: OpenAlert, previous: Level | None, to: Level | None
    ) -> AlertTransition:
        crossed = threshold if to is not None else indicator.clear_threshold
        return transition(
            indicator, scope_id, alert, kind, previous, to, value, crossed, _at(end_ms)
        )

    alert = state.open
    if alert is None:
        if level is None:
            return replace(state, breach_since_ms=None), None
        since = state.breach_since_ms if contiguous and state.breach_since_ms is not None else None
        since = start_ms if since is None else since
        if end_ms - since < indicator.for_seconds * 1000:
            return replace(state, breach_since_ms=since), None
        opened_at = _at(end_ms)
        opened = OpenAlert(
            alert_id=alert_id_for(indicator.code, indicator.scope_level, scope_id, opened_at),
            opened_at=opened_at,
            level=level,
            seq=1,
            occurrences=1,
        )
        new = ScopeState(open=opened, last_end_ms=end_ms)
        return new, emit(TransitionKind.FIRING, opened, None, level)

    if level is not None:
        counted = replace(alert, occurrences=alert.occurrences + 1)
        if level is alert.level:
            return replace(state, open=counted, clear_since_ms=None), None
        changed = replace(counted, level=level, seq=alert.seq + 1)
        new = replace(state, open=changed, clear_since_ms=None)
        return new, emit(TransitionKind.LEVEL_CHANGED, changed, alert.level, level)

    if not indicator.clears(value):  # inside the hysteresis band
        return replace(state, clear_since_ms=None), None
    since = state.clear_since_ms if contiguous and state.clear_since_ms is not None else None
    since = start_ms if since is None else since
    if end_ms - since < indicator.clear_for_seconds * 1000:
        return replace(state, clear_since_ms=since), None
    closed = replace(alert, seq=alert.seq + 1)
    return ScopeState(last_end_ms=end_ms), emit(TransitionKind.RESOLVED, closed, alert.level, None)
