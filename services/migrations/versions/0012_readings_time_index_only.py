"""Raw readings are indexed by time only: the (device_id, metric, ts) btree goes. On the plain
layout the rollup tables get an index on their bucket.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from alembic import op
from sqlalchemy import text

from services.storage.layout import Layout

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One entry a reading in a btree keyed by two texts and a time was 62% of PostgreSQL's
    # CPU under bench.e2e at 80,000 readings/s (about 5 us a reading, with its page splits,
    # WAL and evictions): the largest single cost on the ingest path. Nothing needs it.
    # Every query of raw readings is bounded in time and answered through the BRIN index on
    # ts (latest readings of a scope, the plain layout's recent buckets, previews); per-device
    # history reads the rollups, which keep their (device_id, metric, bucket) index; the
    # plain layout's rollup refresh no longer looks a bucket's last value up by device
    # (services.storage.scheduled).
    op.execute("DROP INDEX IF EXISTS readings_device_metric_ts")
    if _layout() is Layout.PLAIN:
        # Upkeep deletes a bucket range of a rollup before recomputing it, and retention
        # deletes the oldest: no index led with the bucket, so each was a scan of the whole
        # rollup (400 days of minutes by default), every minute.
        op.execute(
            "CREATE INDEX readings_1m_bucket ON readings_1m (bucket);"
            "CREATE INDEX readings_1h_bucket ON readings_1h (bucket)"
        )


def downgrade() -> None:
    if _layout() is Layout.PLAIN:
        op.execute("DROP INDEX readings_1h_bucket; DROP INDEX readings_1m_bucket")
    op.execute("CREATE INDEX readings_device_metric_ts ON readings (device_id, metric, ts)")


def _layout() -> Layout:
    return Layout(op.get_bind().execute(text("SELECT layout FROM storage_layout")).scalar_one())
