"""State lists filtered by status read their page straight from an index:
(entity_type, status) becomes (entity_type, status, revision), so a page of
the newest states of one status is the index's last entries, however many
states of other statuses were written since (docs/data-model.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_states_type_status_revision", "states", ["entity_type", "status", "revision"]
    )
    op.drop_index("ix_states_type_status", "states")


def downgrade() -> None:
    op.create_index("ix_states_type_status", "states", ["entity_type", "status"])
    op.drop_index("ix_states_type_status_revision", "states")
