"""Preview (backtest): the alerts one indicator definition would have raised over history.

Pure: the caller loads the readings (e.g. from the ``readings`` table) into arrays. The same
core as the engine computes the window values (rules/core.py) and the same life cycle emits the
transitions (rules/windows.py); only scopes that breach at some window are walked one window at
a time, which is exact because a scope that never breaches never changes state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules import core
from rules.indicators import Indicator
from rules.windows import ScopeState, step
from schemas.alerts import AlertTransition


@dataclass(frozen=True, slots=True)
class Preview:
    windows: core.WindowValues
    levels: core.I8
    transitions: list[AlertTransition]


def preview(
    indicator: Indicator,
    scope_ids: Sequence[str],
    scope: core.I64,
    ts: core.I64,
    value: core.F64,
) -> Preview:
    """Alerts ``indicator`` raises over readings (scope index into scope_ids, ms, value)."""
    windows = core.aggregate(
        scope, ts, value, indicator.window_seconds * 1000, indicator.aggregation
    )
    ranks = core.levels(indicator, windows.value)
    transitions: list[AlertTransition] = []
    states: dict[int, ScopeState] = {}
    n = len(windows)
    done = -1
    for hit in np.flatnonzero(ranks > 0).tolist():
        if hit <= done:
            continue
        # Windows skipped since this scope's last step were normal with no alert open: the
        # same as a gap for the life cycle. Walk on while an alert is open or a run pending.
        s = int(windows.scope[hit])
        state = states.get(s, ScopeState())
        row = hit
        while True:
            state, transition = step(
                indicator, scope_ids[s], state, int(windows.start[row]), float(windows.value[row])
            )
            if transition is not None:
                transitions.append(transition)
            row += 1
            idle = state.open is None and state.breach_since_ms is None
            if idle or row >= n or int(windows.scope[row]) != s:
                break
        states[s] = state
        done = row - 1
    return Preview(windows, ranks, transitions)
