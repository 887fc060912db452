"""an index on usage.message_id: deleting a message sets its usage rows' link to null, and a
stored completion's usage is read by it; without the index each of those scans the ledger

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 06:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_usage_message_id", "usage", ["message_id"], postgresql_concurrently=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_usage_message_id", table_name="usage", postgresql_concurrently=True)
