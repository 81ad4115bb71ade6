"""States, history, outbox, revision counter and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "states",
        sa.Column("entity_type", sa.String(64), primary_key=True),
        sa.Column("entity_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("metadata", JsonDocument, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_index("ix_states_type_status", "states", ["entity_type", "status"])
    op.create_index("ix_states_type_updated", "states", ["entity_type", "updated_at", "entity_id"])
    op.create_index("ix_states_type_created", "states", ["entity_type", "created_at", "entity_id"])
    op.create_index("ix_states_type_revision", "states", ["entity_type", "revision"])

    op.create_table(
        "state_history",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("entity_type", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("previous_status", sa.String(64)),
        sa.Column("new_status", sa.String(64)),
        sa.Column("metadata", JsonDocument, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("changed_at", Timestamp, nullable=False),
    )
    op.create_index(
        "ix_state_history_entity", "state_history", ["entity_type", "entity_id", "revision"]
    )

    op.create_table(
        "outbox",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("event", sa.String(128), nullable=False),
        sa.Column("entity_type", sa.String(64)),
        sa.Column("entity_id", sa.String(128)),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_outbox_created", "outbox", ["created_at"])

    counter = op.create_table(
        "revision_counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "value": 0}])

    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(400), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("outcome", sa.LargeBinary, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("revision_counter")
    op.drop_table("outbox")
    op.drop_table("state_history")
    op.drop_table("states")
