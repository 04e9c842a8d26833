"""The device registry: what each device is, where it stands, who owns it, whether it is on.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE devices (
            device_id        text PRIMARY KEY,
            device_type      text             NOT NULL,
            lon              double precision,
            lat              double precision,
            grid             text,
            street           text,
            district         text,
            owner_department text,
            status           text             NOT NULL DEFAULT 'active'
                             CHECK (status IN ('active', 'disabled')),
            updated_at       timestamptz      NOT NULL DEFAULT now(),
            updated_by       text             NOT NULL
        );
        CREATE INDEX devices_district ON devices (district);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE devices;")
