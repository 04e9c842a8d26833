"""Dead letters kept in PostgreSQL, to list them and replay them once the cause is fixed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Written by the storage writer with its offsets in the same transaction (exactly once),
        -- so a plain serial id suffices.
        CREATE TABLE dead_letters (
            letter_id      bigserial PRIMARY KEY,
            source         text        NOT NULL,
            reason         text        NOT NULL,
            payload        text        NOT NULL,
            truncated      boolean     NOT NULL,
            received_at    timestamptz NOT NULL,
            topic          text,
            partition      integer,
            "offset"       bigint,
            stored_at      timestamptz NOT NULL DEFAULT now(),
            replayed_at    timestamptz,
            replayed_by    text,
            replay_outcome text
        );
        CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);
        CREATE INDEX dead_letters_source ON dead_letters (source, received_at DESC);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE dead_letters;")
