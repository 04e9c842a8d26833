"""bench.e2e's poller of readable alert transitions, against real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bench.e2e import Seen
from services.local.postgres import LocalPostgres
from tests.integration.conftest import eventually, fresh_database

pytestmark = pytest.mark.integration

INSERT = """
INSERT INTO alert_transitions (transition_id, alert_id, seq, kind, indicator, scope_level,
    scope_id, value, occurrences, opened_at, observed_at, stored_at)
VALUES (%s, %s, 1, 'firing', 'traffic.road_speed', 'device', 'road-1', 18.5, 1, now(), now(),
    %s)
"""


def test_the_poller_sees_recent_commits_and_the_sweep_finds_long_transactions(
    postgres: LocalPostgres,
) -> None:
    url = fresh_database(postgres)
    since = datetime.now(UTC) - timedelta(minutes=5)
    recent, long_running, before = (str(uuid.uuid4()) for _ in range(3))
    with psycopg.connect(url, autocommit=True) as conn, Seen(url, since) as seen:
        conn.execute(INSERT, (recent, uuid.uuid4(), datetime.now(UTC)))
        committed = time.time()
        eventually(lambda: recent in seen.at, timeout=10)
        # A transaction that began a minute ago (past the poll's look-back) and commits now,
        # and one from before the phase.
        conn.execute(INSERT, (long_running, uuid.uuid4(), datetime.now(UTC) - timedelta(minutes=1)))
        conn.execute(INSERT, (before, uuid.uuid4(), since - timedelta(seconds=1)))
        time.sleep(5 * Seen.EVERY)
        assert long_running not in seen.at
        ended = time.time()
    assert committed <= seen.at[recent] < ended
    assert seen.at[long_running] >= ended, "the sweep counts it as readable when it ran"
    assert seen.swept == 1
    assert before not in seen.at
