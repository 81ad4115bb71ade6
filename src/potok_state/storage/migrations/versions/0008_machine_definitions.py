"""Transition tables defined over the API and their history; history rows that
answer reads as of a revision on their own (the creation time of their life),
and the horizon below which retention pruned history.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)

# Each row's creation time is that of the newest creation of its entity at or
# before it. Rows whose creation was already pruned keep NULL (a read as of
# them answers 410).
BACKFILL_CREATED_AT = """
UPDATE state_history SET created_at = (
    SELECT c.changed_at FROM state_history AS c
    WHERE c.entity_type = state_history.entity_type AND c.entity_id = state_history.entity_id
        AND c.event = 'entity.created' AND c.revision <= state_history.revision
    ORDER BY c.revision DESC LIMIT 1
)
WHERE event <> 'entity.deleted'
"""


def upgrade() -> None:
    with op.batch_alter_table("state_history") as table:
        table.add_column(sa.Column("created_at", Timestamp))
    op.execute(BACKFILL_CREATED_AT)
    op.create_table(
        "history_horizon",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("changed_at", Timestamp, nullable=False),
    )
    op.create_table(
        "state_machine_definitions",
        sa.Column("entity_type", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("definition", sa.Text),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "state_machine_history",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entity_type", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous", sa.Text),
        sa.Column("definition", sa.Text),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("changed_at", Timestamp, nullable=False),
    )
    op.create_index(
        "ix_state_machine_history_entity", "state_machine_history", ["entity_type", "revision"]
    )


def downgrade() -> None:
    op.drop_index("ix_state_machine_history_entity", table_name="state_machine_history")
    op.drop_table("state_machine_history")
    op.drop_table("state_machine_definitions")
    op.drop_table("history_horizon")
    with op.batch_alter_table("state_history") as table:
        table.drop_column("created_at")
