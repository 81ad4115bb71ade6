"""Webhook subscriptions: the disable policy's failure streak, the circuit
breaker, the previous secret kept during a rotation, and per-subscription
delivery limits (docs/webhooks.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
ZERO = sa.text("0")


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as table:
        table.add_column(
            sa.Column("failed_attempts", sa.Integer, nullable=False, server_default=ZERO)
        )
        table.add_column(sa.Column("failing_since", Timestamp))
        table.add_column(
            sa.Column("failing_notified", sa.Integer, nullable=False, server_default=ZERO)
        )
        table.add_column(sa.Column("circuit_open_until", Timestamp))
        table.add_column(
            sa.Column("circuit_probes", sa.Integer, nullable=False, server_default=ZERO)
        )
        table.add_column(sa.Column("previous_secret", sa.Text))
        table.add_column(sa.Column("previous_secret_until", Timestamp))
        table.add_column(sa.Column("rate_limit", sa.Integer))
        table.add_column(sa.Column("timeout_ms", sa.Integer))
        table.add_column(sa.Column("max_attempts", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as table:
        for column in (
            "max_attempts",
            "timeout_ms",
            "rate_limit",
            "previous_secret_until",
            "previous_secret",
            "circuit_probes",
            "circuit_open_until",
            "failing_notified",
            "failing_since",
            "failed_attempts",
        ):
            table.drop_column(column)
