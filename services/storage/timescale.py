"""Every statement of the TimescaleDB layout, in one place, so it can be run and checked
against a real TimescaleDB (2.13 or newer, on PostgreSQL 15 to 18).

The plain-PostgreSQL layout keeps the same table and view names, so queries differ only where
``time_bucket`` replaces ``date_bin``.
"""

from __future__ import annotations

from services.config import StorageSettings

EXTENSION = "CREATE EXTENSION IF NOT EXISTS timescaledb"

# Run by the storage migration on a database that has the extension. Hypertables need every
# unique index to contain the partitioning column, hence the wider primary key on transitions.
SCHEMA: tuple[str, ...] = (
    "SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'), "
    "migrate_data => true, if_not_exists => true)",
    "SELECT create_hypertable('indicator_values', by_range('window_start', INTERVAL '7 days'), "
    "migrate_data => true, if_not_exists => true)",
    "ALTER TABLE alert_transitions DROP CONSTRAINT alert_transitions_pkey",
    "ALTER TABLE alert_transitions ADD PRIMARY KEY (transition_id, observed_at)",
    "SELECT create_hypertable('alert_transitions', by_range('observed_at', INTERVAL '30 days'), "
    "migrate_data => true, if_not_exists => true)",
    # Continuous aggregates; real-time (materialized_only = false) so the newest minutes are
    # answered from raw readings until a refresh has materialised them.
    """
    CREATE MATERIALIZED VIEW readings_1m
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket, device_id, metric, grid, street,
           district, count(*) AS samples, sum(value) AS total, min(value) AS min_value,
           max(value) AS max_value, last(value, ts) AS last_value, max(ts) AS last_ts
    FROM readings
    GROUP BY 1, device_id, metric, grid, street, district
    WITH NO DATA
    """,
    # Hierarchical: the hourly rollup reads the minute rollup, not raw readings.
    """
    CREATE MATERIALIZED VIEW readings_1h
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket, device_id, metric, grid, street,
           district, sum(samples) AS samples, sum(total) AS total, min(min_value) AS min_value,
           max(max_value) AS max_value, last(last_value, last_ts) AS last_value,
           max(last_ts) AS last_ts
    FROM readings_1m
    GROUP BY 1, device_id, metric, grid, street, district
    WITH NO DATA
    """,
    "CREATE INDEX readings_1m_metric_bucket ON readings_1m (metric, bucket)",
    "CREATE INDEX readings_1h_metric_bucket ON readings_1h (metric, bucket)",
)


def _days(days: int) -> str:
    return f"INTERVAL '{int(days)} days'"


def policies(storage: StorageSettings) -> list[str]:
    """Statements that make the refresh, compression and retention policies match settings.

    Each policy is removed and added again, so a changed setting takes effect at the next
    start; ``if_exists`` / ``if_not_exists`` make the whole list safe to run repeatedly.
    """
    lateness = f"INTERVAL '{int(storage.rollup_lateness_minutes)} minutes'"
    out = [
        "SELECT remove_continuous_aggregate_policy('readings_1m', if_exists => true)",
        "SELECT add_continuous_aggregate_policy('readings_1m', "
        f"start_offset => {lateness} + INTERVAL '2 minutes', end_offset => INTERVAL '1 minute', "
        "schedule_interval => INTERVAL '1 minute')",
        "SELECT remove_continuous_aggregate_policy('readings_1h', if_exists => true)",
        "SELECT add_continuous_aggregate_policy('readings_1h', "
        f"start_offset => {lateness} + INTERVAL '3 hours', end_offset => INTERVAL '1 hour', "
        "schedule_interval => INTERVAL '15 minutes')",
    ]
    if storage.compress_after_days is not None:
        out += [
            "ALTER TABLE readings SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'device_id, metric', "
            "timescaledb.compress_orderby = 'ts DESC')",
            "SELECT remove_compression_policy('readings', if_exists => true)",
            "SELECT add_compression_policy('readings', "
            f"compress_after => {_days(storage.compress_after_days)})",
        ]
    else:
        out.append("SELECT remove_compression_policy('readings', if_exists => true)")
    retained = {
        "readings": storage.readings_retention_days,
        "indicator_values": storage.indicator_values_retention_days,
        "alert_transitions": storage.alert_transitions_retention_days,
        "readings_1m": storage.rollup_1m_retention_days,
    }
    for relation, days in retained.items():
        out.append(f"SELECT remove_retention_policy('{relation}', if_exists => true)")
        if days is not None:
            out.append(f"SELECT add_retention_policy('{relation}', drop_after => {_days(days)})")
    return out
