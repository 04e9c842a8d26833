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
from rules.alerts import Change
from rules.indicators import Indicator
from rules.windows import Judge, ScopeState, advance, observe
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
    judge = Judge.of(indicator, stale_factor=None)  # history has gaps by design: no staleness
    changes: list[Change] = []
    states: dict[int, ScopeState] = {}
    n = len(windows)
    until = int(windows.start.max()) + judge.window_ms if n else 0
    done = -1
    for hit in np.flatnonzero(ranks > 0).tolist():
        if hit <= done:
            continue
        # Windows skipped since this scope's last step were normal with nothing open or
        # pending: they change nothing. Walk on while something is open or pending.
        s = int(windows.scope[hit])
        state = states.get(s, ScopeState())
        row = hit
        while True:
            start, level = int(windows.start[row]), float(windows.value[row])
            observe(judge, scope_ids[s], state, start, level, changes)
            row += 1
            if state.idle() or row >= n or int(windows.scope[row]) != s:
                break
        if row >= n or int(windows.scope[row]) != s:
            advance(judge, scope_ids[s], state, until, changes)  # time runs to the range end
        states[s] = state
        done = row - 1
    return Preview(windows, ranks, [change.model() for change in changes])
