"""Leases: a state may hold a lease that lapses without heartbeats.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
HELD = sa.text("lease_expires_at IS NOT NULL")


def upgrade() -> None:
    op.add_column("states", sa.Column("lease_ttl", sa.Integer, nullable=True))
    op.add_column("states", sa.Column("lease_expires_at", Timestamp, nullable=True))
    op.create_index(
        "ix_states_lease_due",
        "states",
        ["lease_expires_at"],
        postgresql_where=HELD,
        sqlite_where=HELD,
    )


def downgrade() -> None:
    op.drop_index("ix_states_lease_due", "states")
    with op.batch_alter_table("states") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_ttl")
