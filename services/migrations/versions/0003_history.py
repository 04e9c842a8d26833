"""History: indicator values, rollups at 1 minute and 1 hour, and the layout they live in
(TimescaleDB hypertables and continuous aggregates, or plain PostgreSQL tables).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import logging

from alembic import context, op
from sqlalchemy import text

from services.storage import timescale
from services.storage.layout import Layout, choose

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

_ROLLUP = """
CREATE TABLE {name} (
    bucket     timestamptz      NOT NULL,
    device_id  text             NOT NULL,
    metric     text             NOT NULL,
    grid       text,
    street     text,
    district   text,
    samples    bigint           NOT NULL,
    total      double precision NOT NULL,
    min_value  double precision NOT NULL,
    max_value  double precision NOT NULL,
    last_value double precision NOT NULL,
    last_ts    timestamptz      NOT NULL
);
CREATE INDEX {name}_metric_bucket ON {name} (metric, bucket);
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE indicator_values (
            indicator    text             NOT NULL,
            scope_level  text             NOT NULL,
            scope_id     text             NOT NULL,
            window_start timestamptz      NOT NULL,
            window_end   timestamptz      NOT NULL,
            value        double precision NOT NULL,
            samples      integer          NOT NULL,
            level        text,
            value_id     uuid             NOT NULL,
            stored_at    timestamptz      NOT NULL DEFAULT now(),
            -- One value per indicator, scope and window: a replayed value is the same row.
            PRIMARY KEY (indicator, scope_level, scope_id, window_start)
        );
        CREATE INDEX alert_transitions_observed ON alert_transitions (observed_at DESC);
        CREATE INDEX alert_transitions_scope
            ON alert_transitions (indicator, scope_id, observed_at DESC);
        -- Index upkeep dominated loading (62k rows/s by COPY with the first slice's four
        -- indexes, 790k with none). Descending btrees on a rising time column insert at the
        -- left edge of each key, missing PostgreSQL's rightmost-leaf fast path: ascending ones
        -- scan backwards just as well. Scope and city queries read the rollups, or recent raw
        -- rows through the BRIN index on ts, so the per-district index goes.
        DROP INDEX readings_district_ts;
        DROP INDEX readings_device_metric_ts;
        CREATE INDEX readings_device_metric_ts ON readings (device_id, metric, ts);

        CREATE TABLE storage_layout (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            layout    text        NOT NULL CHECK (layout IN ('plain', 'timescaledb')),
            chosen_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )
    bind = op.get_bind()
    available = bind.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    layout = choose(
        want_timescaledb=bool(context.config.attributes.get("use_timescaledb", True)),
        available=available is not None,
    )
    log.info("storage layout: %s", layout.value)
    if layout is Layout.TIMESCALEDB:
        op.execute(timescale.EXTENSION)
        for statement in timescale.SCHEMA:
            op.execute(statement)
    else:
        op.execute(_ROLLUP.format(name="readings_1m"))
        op.execute(_ROLLUP.format(name="readings_1h"))
        op.execute(
            "CREATE INDEX readings_1m_device ON readings_1m (device_id, metric, bucket);"
            "CREATE INDEX readings_1h_device ON readings_1h (device_id, metric, bucket);"
            # How far each rollup has been recomputed: the plain layout's refresh watermark.
            "CREATE TABLE rollup_watermarks ("
            " rollup text PRIMARY KEY, refreshed_to timestamptz NOT NULL)"
        )
    bind.execute(text("INSERT INTO storage_layout (layout) VALUES (:layout)"), {"layout": layout})


def downgrade() -> None:
    layout = op.get_bind().execute(text("SELECT layout FROM storage_layout")).scalar()
    if layout == Layout.TIMESCALEDB:
        op.execute("DROP MATERIALIZED VIEW readings_1h; DROP MATERIALIZED VIEW readings_1m;")
    else:
        op.execute("DROP TABLE rollup_watermarks; DROP TABLE readings_1h; DROP TABLE readings_1m;")
    op.execute(
        "DROP TABLE storage_layout; DROP INDEX readings_device_metric_ts; "
        "CREATE INDEX readings_device_metric_ts ON readings (device_id, metric, ts DESC); "
        "CREATE INDEX readings_district_ts ON readings (district, ts DESC); "
        "DROP INDEX alert_transitions_scope; DROP INDEX alert_transitions_observed; "
        "DROP TABLE indicator_values;"
    )
