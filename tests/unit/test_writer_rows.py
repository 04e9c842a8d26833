"""The writer's one-row-per-alert upsert leaves every alert as upserting its transitions one by
one, in order, would: checked against a model of the SQL upsert, over random batches."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from schemas.alerts import AlertTransition, Level, ScopeLevel, TransitionKind
from services.storage.writer import ALERT_COLUMNS, PEAK_ORDER, alert_rows

T0 = datetime(2026, 7, 1, tzinfo=UTC)
UPDATED = (
    "status",
    "level",
    "value",
    "threshold",
    "occurrences",
    "updated_at",
    "resolved_at",
    "last_seq",
)


def upsert(stored: dict[str, object] | None, row: dict[str, object]) -> dict[str, object]:
    """``UPSERT_ALERTS`` for one row, as PostgreSQL runs it (a NULL level compares as NULL)."""
    if stored is None:
        return row
    if not stored["last_seq"] < row["last_seq"]:  # type: ignore[operator]
        return stored
    new = {**stored, **{column: row[column] for column in UPDATED}}
    old_peak, new_peak = stored["peak_level"], row["peak_level"]
    if (
        isinstance(old_peak, str)
        and isinstance(new_peak, str)
        and PEAK_ORDER.index(new_peak) > PEAK_ORDER.index(old_peak)
    ):
        new["peak_level"] = new_peak
    return new


def rows(transitions: list[AlertTransition]) -> list[dict[str, object]]:
    found = alert_rows(transitions)
    assert all(list(row) == list(ALERT_COLUMNS) for row in found)
    return found


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


def one_by_one(t: AlertTransition) -> dict[str, object]:
    """The row upserting a single transition gives (what the writer sent before)."""
    return rows([t])[0]


def test_one_row_per_alert_ends_where_upserting_each_transition_in_order_ends() -> None:
    rng = random.Random(7)
    for _ in range(500):
        lives = [life(rng, uuid.uuid4(), rng.random() < 0.2) for _ in range(rng.randint(1, 4))]
        stored: dict[uuid.UUID, dict[str, object]] = {}
        batch: list[AlertTransition] = []
        for transitions in lives:
            done = rng.randint(0, len(transitions) - 1)  # stored by earlier batches
            for t in transitions[:done]:
                stored[t.alert_id] = upsert(stored.get(t.alert_id), one_by_one(t))
            # This batch: some already stored ones again (a redelivery), then the rest.
            batch += transitions[rng.randint(0, done) :]
        rng.shuffle(batch)
        batch.sort(key=lambda t: t.seq)  # one alert's transitions keep their log order
        sequential = dict(stored)
        for t in batch:
            sequential[t.alert_id] = upsert(sequential.get(t.alert_id), one_by_one(t))
        at_once = dict(stored)
        for row in rows(batch):
            key = row["alert_id"]
            assert isinstance(key, uuid.UUID)
            at_once[key] = upsert(at_once.get(key), row)
        assert at_once == sequential


def test_a_storm_of_alerts_is_one_row_each() -> None:
    rng = random.Random(3)
    lives = [life(rng, uuid.uuid4(), False) for _ in range(300)]
    firsts = [transitions[0] for transitions in lives]
    assert len(rows(firsts)) == 300
    assert {r["status"] for r in rows(firsts)} == {"firing"}
