"""Readings, alert transitions, current alerts, and consumer offsets kept with their effects.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE readings (
            ts          timestamptz      NOT NULL,
            reading_id  uuid             NOT NULL,
            device_id   text             NOT NULL,
            metric      text             NOT NULL,
            value       double precision NOT NULL,
            unit        text             NOT NULL,
            grid        text,
            street      text,
            district    text,
            lon         double precision,
            lat         double precision,
            ingested_at timestamptz      NOT NULL
        );
        -- "Latest readings of a scope" walks these backwards from now.
        CREATE INDEX readings_device_metric_ts ON readings (device_id, metric, ts DESC);
        CREATE INDEX readings_district_ts ON readings (district, ts DESC);
        CREATE INDEX readings_ts_brin ON readings USING brin (ts);

        CREATE TABLE alert_transitions (
            transition_id  uuid PRIMARY KEY,
            alert_id       uuid             NOT NULL,
            seq            integer          NOT NULL,
            kind           text             NOT NULL,
            indicator      text             NOT NULL,
            scope_level    text             NOT NULL,
            scope_id       text             NOT NULL,
            level          text,
            previous_level text,
            value          double precision NOT NULL,
            threshold      double precision,
            occurrences    integer          NOT NULL,
            opened_at      timestamptz      NOT NULL,
            observed_at    timestamptz      NOT NULL,
            reading_id     uuid,
            stored_at      timestamptz      NOT NULL DEFAULT now()
        );
        CREATE INDEX alert_transitions_alert ON alert_transitions (alert_id, seq);

        -- One row per alert: its state after the latest transition seen.
        CREATE TABLE alerts (
            alert_id     uuid PRIMARY KEY,
            indicator    text             NOT NULL,
            scope_level  text             NOT NULL,
            scope_id     text             NOT NULL,
            status       text             NOT NULL CHECK (status IN ('firing', 'resolved')),
            level        text,
            peak_level   text             NOT NULL,
            value        double precision NOT NULL,
            threshold    double precision,
            occurrences  integer          NOT NULL,
            opened_at    timestamptz      NOT NULL,
            updated_at   timestamptz      NOT NULL,
            resolved_at  timestamptz,
            last_seq     integer          NOT NULL
        );
        CREATE INDEX alerts_status_updated ON alerts (status, updated_at DESC);
        CREATE INDEX alerts_scope ON alerts (indicator, scope_level, scope_id);

        -- Consumers that write to PostgreSQL keep their Kafka offsets in the same transaction
        -- as the rows, so a redelivered batch is recognised and skipped: exactly-once storage.
        CREATE TABLE consumer_offsets (
            consumer_group text        NOT NULL,
            topic          text        NOT NULL,
            partition      integer     NOT NULL,
            next_offset    bigint      NOT NULL,
            updated_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, topic, partition)
        );
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE consumer_offsets; DROP TABLE alerts; "
        "DROP TABLE alert_transitions; DROP TABLE readings;"
    )
