"""API keys for devices, gateways and people: hashed secrets, scopes, revocation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- A key is shown once when issued; only the SHA-256 of its secret is kept. Keys are
        -- 256-bit random tokens, so a fast hash is enough (no password-stretching needed).
        CREATE TABLE api_keys (
            key_id       text PRIMARY KEY,
            secret_hash  bytea       NOT NULL,
            name         text        NOT NULL,
            scopes       text[]      NOT NULL,
            -- A device's own key may only send that device's readings; NULL for gateways/people.
            device_id    text,
            created_at   timestamptz NOT NULL DEFAULT now(),
            created_by   text        NOT NULL,
            revoked_at   timestamptz,
            revoked_by   text
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE api_keys;")
