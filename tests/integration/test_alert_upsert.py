"""The writer stores a batch of alert transitions in one statement, upserting each alert once
from its latest transition and the highest level the batch reached. That must leave every
alert as storing its transitions one by one, in order, would: checked on real PostgreSQL,
over random batches that also redeliver transitions stored before."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.alerts import AlertTransition, Level, ScopeLevel, TransitionKind
from services.local.postgres import LocalPostgres
from services.storage.writer import ALERT_COLUMNS, STORE_TRANSITIONS, transitions_json
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def life(rng: random.Random, alert: uuid.UUID, no_data: bool) -> list[AlertTransition]:
    """An alert's transitions: firing, level changes up and down, perhaps resolved."""
    out: list[AlertTransition] = []
    level: Level | None = None
    for seq in range(1, rng.randint(1, 7) + 1):
        last = seq > 1 and rng.random() < 0.25
        if no_data:
            new, kind = None, TransitionKind.RESOLVED if last else TransitionKind.FIRING
        elif last:
            new, kind = None, TransitionKind.RESOLVED
        else:
            new = rng.choice([x for x in Level if x is not level])
            kind = TransitionKind.FIRING if seq == 1 else TransitionKind.LEVEL_CHANGED
        out.append(
            AlertTransition(
                transition_id=uuid.uuid5(alert, str(seq)),
                alert_id=alert,
                seq=seq,
                kind=kind,
                condition="no_data" if no_data else "threshold",
                indicator="water.depth",
                scope_level=ScopeLevel.DEVICE,
                scope_id=f"wl-{alert.hex[:6]}",
                level=new,
                previous_level=level,
                value=rng.random() * 50,
                threshold=None if no_data else 10.0,
                occurrences=seq,
                opened_at=T0,
                observed_at=T0 + timedelta(minutes=seq),
            )
        )
        level = new
        if last:
            break
    return out


def store(conn: psycopg.Connection[tuple[object, ...]], transitions: list[AlertTransition]) -> None:
    with conn.transaction():
        conn.execute(STORE_TRANSITIONS, (transitions_json(transitions),))


def alerts(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    columns = ", ".join(ALERT_COLUMNS)
    return conn.execute(f"SELECT {columns} FROM alerts ORDER BY alert_id").fetchall()


def test_one_statement_a_batch_ends_where_storing_each_transition_in_order_ends(
    postgres: LocalPostgres,
) -> None:
    rng = random.Random(7)
    with (
        psycopg.connect(fresh_database(postgres)) as at_once,
        psycopg.connect(fresh_database(postgres)) as one_by_one,
    ):
        for _ in range(150):
            lives = [life(rng, uuid.uuid4(), rng.random() < 0.2) for _ in range(rng.randint(1, 4))]
            batch: list[AlertTransition] = []
            for transitions in lives:
                done = rng.randint(0, len(transitions) - 1)  # stored by earlier batches
                for t in transitions[:done]:
                    store(at_once, [t])
                    store(one_by_one, [t])
                # This batch: some already stored ones again (a redelivery), then the rest.
                batch += transitions[rng.randint(0, done) :]
            rng.shuffle(batch)
            batch.sort(key=lambda t: t.seq)  # one alert's transitions keep their log order
            store(at_once, batch)
            for t in batch:
                store(one_by_one, [t])
        assert alerts(at_once) == alerts(one_by_one)
        counted = "SELECT count(*), count(DISTINCT transition_id) FROM alert_transitions"
        stored = at_once.execute(counted).fetchone()
        assert stored == one_by_one.execute(counted).fetchone()
        assert stored is not None
        assert stored[0] == stored[1] > 150


def test_a_storm_of_alerts_is_one_row_each(postgres: LocalPostgres) -> None:
    rng = random.Random(3)
    firsts = [life(rng, uuid.uuid4(), False)[0] for _ in range(300)]
    with psycopg.connect(fresh_database(postgres)) as conn:
        store(conn, firsts)
        assert conn.execute("SELECT status, count(*) FROM alerts GROUP BY 1").fetchall() == [
            ("firing", 300)
        ]
        assert conn.execute(
            "SELECT count(*) FROM alerts a JOIN alert_transitions t USING (alert_id) "
            "WHERE a.peak_level = t.level AND a.last_seq = 1 AND a.opened_at = t.opened_at"
        ).fetchone() == (300,)
