"""bench.e2e --storm: where the latency phase starts against the ten-minute cycle."""

from __future__ import annotations

import pytest

from bench.e2e import CYCLE, STORM_AT, WARM_UP, storm_wait


@pytest.mark.parametrize("now", [1_764_560_000.0, 1_764_560_123.4, 1_764_560_599.9])
@pytest.mark.parametrize("phase", [60.0, 300.0, 900.0])
def test_a_storm_run_has_a_ten_minute_close_at_the_same_point_of_its_phase(
    now: float, phase: float
) -> None:
    wait = storm_wait(now, phase, lateness=30)
    assert 0 <= wait < CYCLE
    close = now + wait + WARM_UP + STORM_AT * phase  # epoch s, STORM_AT into the phase
    assert close - 30 == pytest.approx(round((close - 30) / CYCLE) * CYCLE, abs=1e-6)
