"""Rules engine state kept with the offsets it has consumed, and no-data (staleness) alerts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- What an alert is about: a threshold breached, or a feed that went quiet. A no-data
        -- alert has no level, so neither has its peak.
        ALTER TABLE alert_transitions ADD COLUMN condition text NOT NULL DEFAULT 'threshold';
        ALTER TABLE alerts ADD COLUMN condition text NOT NULL DEFAULT 'threshold'
            CHECK (condition IN ('threshold', 'no_data'));
        ALTER TABLE alerts ALTER COLUMN peak_level DROP NOT NULL;

        -- One row per engine task (a partition of a topic the engine reads): a snapshot of its
        -- windows and alert life cycles, and the offset the snapshot has consumed up to. Both
        -- change in one statement, so a crash leaves either the old pair or the new one.
        CREATE TABLE rules_state (
            consumer_group text        NOT NULL,
            topic          text        NOT NULL,
            partition      integer     NOT NULL,
            next_offset    bigint      NOT NULL,
            state          bytea       NOT NULL,
            format         integer     NOT NULL,
            saved_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, topic, partition)
        );
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE rules_state; "
        "ALTER TABLE alerts DROP COLUMN condition; "
        "ALTER TABLE alert_transitions DROP COLUMN condition"
    )
