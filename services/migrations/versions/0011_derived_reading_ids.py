"""Readings without a client-chosen id are stored without one; their id is derived on read.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

from services.storage.frames import stored_reading_id

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    # The derived id is uuid5 of (device, metric, time): a SHA-1 a reading on the writer's
    # path (a quarter of its CPU at 45,000 readings/s), 16 bytes a row, and nothing a reader
    # cannot compute from the row itself (services.storage.frames.stored_reading_id).
    # TimescaleDB before 2.18 refuses to drop NOT NULL on a hypertable with compression on
    # (timescale/timescaledb#7455): there the column stays required and the writer keeps
    # storing derived ids (it checks the column when it connects).
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("ALTER TABLE readings ALTER COLUMN reading_id DROP NOT NULL")
    except DBAPIError as exc:
        log.warning("readings.reading_id stays NOT NULL (the writer derives ids): %s", exc.orig)


def downgrade() -> None:
    # Store the derived ids again (in Python: the server has no uuid5 without uuid-ossp).
    bind = op.get_bind()
    while True:
        rows = bind.exec_driver_sql(
            "SELECT DISTINCT device_id, metric, ts FROM readings "
            "WHERE reading_id IS NULL LIMIT 10000"
        ).all()
        if not rows:
            break
        bind.exec_driver_sql(
            "UPDATE readings r SET reading_id = v.id FROM unnest("
            "%(devices)s::text[], %(metrics)s::text[], %(stamps)s::timestamptz[], %(ids)s::uuid[]"
            ") AS v(device_id, metric, ts, id) WHERE r.reading_id IS NULL"
            " AND (r.device_id, r.metric, r.ts) = (v.device_id, v.metric, v.ts)",
            {
                "devices": [d for d, _, _ in rows],
                "metrics": [m for _, m, _ in rows],
                "stamps": [t for _, _, t in rows],
                "ids": [stored_reading_id(None, d, m, t) for d, m, t in rows],
            },
        )
    op.execute("ALTER TABLE readings ALTER COLUMN reading_id SET NOT NULL")
