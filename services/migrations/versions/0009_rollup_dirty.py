"""Rollup buckets whose readings changed since the rollups last took them in.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Plain PostgreSQL layout: the writer marks the minute buckets of the readings it
        -- stores, in the same transaction; the rollup refresh recomputes the marked buckets
        -- before its watermark (late data, however late) and consumes the marks. Before, it
        -- recomputed the whole last hour every round, whatever had changed.
        CREATE TABLE rollup_dirty (
            rollup text        NOT NULL,
            bucket timestamptz NOT NULL,
            PRIMARY KEY (rollup, bucket)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE rollup_dirty")
