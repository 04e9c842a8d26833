"""Dead letters stored once per consumer and record.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- A consumer sends its dead letters before the transaction that stores its batch; a
        -- batch retried after a lost database or a rebalance (and a rules engine replaying
        -- from its last save) sends them again. Kafka keeps both copies (at least once); the
        -- table keeps one letter per consumer and record it refused. Letters about input
        -- that never reached Kafka (refused by ingest) have no offset and are all kept.
        DELETE FROM dead_letters d USING dead_letters e
        WHERE d."offset" IS NOT NULL
          AND (d.source, d.topic, d.partition, d."offset")
            = (e.source, e.topic, e.partition, e."offset")
          AND d.letter_id > e.letter_id;
        CREATE UNIQUE INDEX dead_letters_origin
            ON dead_letters (source, topic, partition, "offset");
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX dead_letters_origin;")
