"""Indicator definitions in PostgreSQL: every change a new version (who, when, why), and the
audited emergency-mode (平急) switches. One sequence numbers both, so an engine polls one number.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE SEQUENCE rules_version_seq;
        -- Append-only: the current definition of an indicator is its highest version; a NULL
        -- definition retires it. Roll back = append the old definition again.
        CREATE TABLE indicator_versions (
            version     bigint PRIMARY KEY DEFAULT nextval('rules_version_seq'),
            code        text        NOT NULL,
            definition  jsonb,
            changed_at  timestamptz NOT NULL DEFAULT now(),
            changed_by  text        NOT NULL,
            reason      text        NOT NULL
        );
        CREATE INDEX indicator_versions_code ON indicator_versions (code, version DESC);
        -- Emergency mode per district, or 'city' for the whole city; the latest row wins.
        CREATE TABLE emergency_switches (
            version     bigint PRIMARY KEY DEFAULT nextval('rules_version_seq'),
            scope       text        NOT NULL,
            active      boolean     NOT NULL,
            changed_at  timestamptz NOT NULL DEFAULT now(),
            changed_by  text        NOT NULL,
            reason      text        NOT NULL
        );
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE emergency_switches; DROP TABLE indicator_versions; "
        "DROP SEQUENCE rules_version_seq;"
    )
