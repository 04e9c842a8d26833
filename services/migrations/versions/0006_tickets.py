"""12345 tickets, with the caller's personal data in a table of its own.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tickets (
            ticket_id    uuid PRIMARY KEY,
            category     text             NOT NULL,
            description  text             NOT NULL,
            reported_at  timestamptz      NOT NULL,
            urgent       boolean          NOT NULL,
            address      text,
            lon          double precision,
            lat          double precision,
            grid         text,
            street       text,
            district     text,
            media_url    text,
            channel      text             NOT NULL,
            external_id  text,
            -- Open311's open/closed, and the loop's finer stage (reported, registered,
            -- dispatched, handled, verified, closed, rejected) beside it.
            status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
            stage        text             NOT NULL DEFAULT 'reported',
            updated_at   timestamptz      NOT NULL DEFAULT now(),
            stored_at    timestamptz      NOT NULL DEFAULT now()
        );
        CREATE INDEX tickets_reported ON tickets (reported_at DESC);
        CREATE INDEX tickets_category ON tickets (category, reported_at DESC);
        CREATE INDEX tickets_district ON tickets (district, reported_at DESC);

        -- Personal data apart from the ticket body: grant and audit access to this table only.
        CREATE TABLE ticket_callers (
            ticket_id uuid PRIMARY KEY REFERENCES tickets ON DELETE CASCADE,
            name      text,
            phone     text
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE ticket_callers; DROP TABLE tickets;")
