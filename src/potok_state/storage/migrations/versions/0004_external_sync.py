"""The external backend's replication cursor: how far the Admin Service has
every change, and which process is draining the journal to it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "external_sync",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(64)),
        sa.Column("held_until", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("external_sync")
