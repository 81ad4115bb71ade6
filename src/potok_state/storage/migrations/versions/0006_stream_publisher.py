"""The event stream's publisher position: how far the JetStream stream has the
outbox, and which process publishes to it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_publisher",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("stream_sequence", sa.BigInteger),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("holder", sa.String(64)),
        sa.Column("held_until", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("stream_publisher")
