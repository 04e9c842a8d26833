"""Pure parts of storage and history: rollup windows, series plans, TimescaleDB statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.config import StorageSettings
from services.history.models import Aggregation, Bucket
from services.history.service import MAX_POINTS, BadRange, bucket_value, plan_series
from services.kafka import Backoff
from services.storage import timescale
from services.storage.layout import Layout, choose
from services.storage.scheduled import floor_to, refresh_ranges, until_round, vacuum_due

T0 = datetime(2026, 11, 24, 10, 17, 42, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def test_floor_to_bucket_starts() -> None:
    assert floor_to(T0, MINUTE) == datetime(2026, 11, 24, 10, 17, tzinfo=UTC)
    assert floor_to(T0, timedelta(hours=1)) == datetime(2026, 11, 24, 10, tzinfo=UTC)
    assert floor_to(T0, timedelta(days=1)) == datetime(2026, 11, 24, tzinfo=UTC)


def test_first_refresh_starts_at_the_first_data_and_stops_at_the_last_complete_bucket() -> None:
    ranges, mark = refresh_ranges(
        refreshed_to=None, earliest=T0 - timedelta(hours=2), now=T0, width=MINUTE, changed=[]
    )
    assert ranges == [(at(8, 17), at(10, 17))]
    assert mark == at(10, 17)


def test_later_refreshes_compute_what_is_new_and_redo_only_changed_buckets() -> None:
    # Marks at 10:01, 10:02 (one run), 10:05, and 10:12 (inside the new range anyway).
    changed = [at(10, 1), at(10, 2), at(10, 5), at(10, 12), at(10, 2)]
    ranges, mark = refresh_ranges(
        refreshed_to=at(10, 10), earliest=None, now=T0, width=MINUTE, changed=changed
    )
    assert ranges == [(at(10, 1), at(10, 3)), (at(10, 5), at(10, 6)), (at(10, 10), at(10, 17))]
    assert mark == at(10, 17)


def test_late_data_of_any_age_is_redone_even_when_no_new_bucket_is_complete() -> None:
    ranges, mark = refresh_ranges(
        refreshed_to=at(10, 17), earliest=None, now=T0, width=MINUTE, changed=[at(7, 3)]
    )
    assert ranges == [(at(7, 3), at(7, 4))]
    assert mark is None  # the watermark stays


def test_nothing_to_refresh_without_data_or_time() -> None:
    assert refresh_ranges(refreshed_to=None, earliest=None, now=T0, width=MINUTE, changed=[]) == (
        [],
        None,
    )
    assert refresh_ranges(
        refreshed_to=T0, earliest=None, now=T0, width=timedelta(hours=1), changed=[]
    ) == ([], None)


def at(hour: int, minute: int) -> datetime:
    return datetime(2026, 11, 24, hour, minute, tzinfo=UTC)


def test_series_plans_pick_the_coarsest_rollup_that_divides_the_bucket() -> None:
    day = T0 - timedelta(days=1)
    assert plan_series(day, T0, Bucket.MIN_5).rollup == "readings_1m"
    assert plan_series(day, T0, Bucket.MIN_15).rollup == "readings_1m"
    assert plan_series(day, T0, Bucket.HOUR_1).rollup == "readings_1h"
    assert plan_series(day, T0, Bucket.DAY_1).rollup == "readings_1h"


@pytest.mark.parametrize(
    ("start", "end", "bucket", "reason"),
    [
        (T0, T0, Bucket.MIN_1, "must be after start"),
        (T0, T0 - MINUTE, Bucket.MIN_1, "must be after start"),
        (T0 - timedelta(days=401), T0, Bucket.DAY_1, "at most 400 days"),
        (T0 - MINUTE * (MAX_POINTS + 1), T0, Bucket.MIN_1, "exceed the limit"),
    ],
)
def test_bad_ranges_are_refused_with_a_reason(
    start: datetime, end: datetime, bucket: Bucket, reason: str
) -> None:
    with pytest.raises(BadRange, match=reason):
        plan_series(start, end, bucket)


def test_bucket_values_from_partial_aggregates() -> None:
    row: dict[str, object] = {
        "samples": 4,
        "total": 10.0,
        "min_value": 1.0,
        "max_value": 4.0,
        "last_value": 3.0,
    }
    got = {agg: bucket_value(agg, row) for agg in Aggregation}
    assert got == {
        Aggregation.MEAN: 2.5,
        Aggregation.MIN: 1.0,
        Aggregation.MAX: 4.0,
        Aggregation.SUM: 10.0,
        Aggregation.COUNT: 4.0,
        Aggregation.LAST: 3.0,
    }


def test_layout_is_timescaledb_only_when_wanted_and_available() -> None:
    assert choose(want_timescaledb=True, available=True) is Layout.TIMESCALEDB
    assert choose(want_timescaledb=True, available=False) is Layout.PLAIN
    assert choose(want_timescaledb=False, available=True) is Layout.PLAIN


def test_timescaledb_schema_makes_hypertables_and_hierarchical_aggregates() -> None:
    text = "\n".join(timescale.SCHEMA)
    for table, column in (
        ("readings", "ts"),
        ("indicator_values", "window_start"),
        ("alert_transitions", "observed_at"),
    ):
        assert f"create_hypertable('{table}', by_range('{column}'" in text
    assert "CREATE MATERIALIZED VIEW readings_1m" in text
    assert "FROM readings_1m" in text  # the hourly rollup builds on the minute one
    assert text.count("timescaledb.materialized_only = false") == 2


def test_timescaledb_policies_follow_settings() -> None:
    statements = timescale.policies(
        StorageSettings(
            readings_retention_days=30, compress_after_days=3, alert_transitions_retention_days=None
        )
    )
    text = "\n".join(statements)
    assert "add_retention_policy('readings', drop_after => INTERVAL '30 days')" in text
    assert "add_compression_policy('readings', compress_after => INTERVAL '3 days')" in text
    assert "remove_retention_policy('alert_transitions', if_exists => true)" in text
    assert "add_retention_policy('alert_transitions'" not in text
    assert text.count("add_continuous_aggregate_policy") == 2
    off = "\n".join(timescale.policies(StorageSettings(compress_after_days=None)))
    assert "add_compression_policy" not in off


def test_backoff_doubles_up_to_a_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=4.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_upkeep_rounds_keep_to_their_point_of_the_minute() -> None:
    minute = 1_764_561_600.0  # 04:00:00 UTC
    assert until_round(minute + 10, 60, 40) == 30  # 04:00:40
    assert until_round(minute + 41.5, 60, 40) == 58.5  # a round that took 1.5 s: 04:01:40
    assert until_round(minute + 40, 60, 40) == 60  # exactly on its moment: the next one
    assert until_round(minute + 105, 60, 40) == 55  # one that overran waits for its next slot
    assert until_round(minute + 3, 30, 10) == 7  # every 30 s: at :10 and :40


def test_readings_are_vacuumed_in_one_round_of_each_period() -> None:
    day = datetime(2026, 12, 1, tzinfo=UTC)
    rounds = [day + timedelta(minutes=m, seconds=40) for m in range(24 * 60)]
    assert [r for r in rounds if vacuum_due(r, 10)][:3] == [
        day + timedelta(minutes=m, seconds=40) for m in (0, 10, 20)
    ]
    assert sum(vacuum_due(r, 10) for r in rounds) == 144
    assert sum(vacuum_due(r, 60) for r in rounds) == 24  # on the hour
    assert not any(vacuum_due(r, None) for r in rounds)
