"""bench.e2e --storm: where the typhoon starts against the five-minute closes."""

from __future__ import annotations

import pytest

from bench.e2e import STORM_CLOSE_AFTER, STORM_CYCLE, storm_wait


@pytest.mark.parametrize("now", [1_764_560_000.0, 1_764_560_123.4, 1_764_560_299.9])
@pytest.mark.parametrize("lateness", [0, 30, 45])
def test_a_storm_run_meets_a_five_minute_close_at_the_same_point_of_its_typhoon(
    now: float, lateness: int
) -> None:
    wait = storm_wait(now, lateness)
    assert 0 <= wait < STORM_CYCLE
    close = now + wait + STORM_CLOSE_AFTER  # epoch s: when those windows may close
    assert close - lateness == pytest.approx(
        round((close - lateness) / STORM_CYCLE) * STORM_CYCLE, abs=1e-6
    )
