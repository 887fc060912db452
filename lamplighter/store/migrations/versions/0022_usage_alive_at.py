"""usage.alive_at: when the replica running an exchange last said it still runs it, so that any
replica can tell an exchange a dead one left from one a live one runs; and a partial index of the
exchanges in progress, which every replica's sweep reads

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-28 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

IN_PROGRESS = sa.text("finish_reason = 'in_progress'")


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("alive_at", sa.DateTime(timezone=True), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_usage_in_progress",
            "usage",
            ["alive_at"],
            postgresql_concurrently=True,
            postgresql_where=IN_PROGRESS,
            sqlite_where=IN_PROGRESS,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_usage_in_progress", table_name="usage", postgresql_concurrently=True)
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("alive_at")
