"""training consent per user; a log of deletions for incremental exports

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 20:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("training_consent", sa.Boolean(), nullable=True))
    op.create_table(
        "deletions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deletions_at", "deletions", ["at"])


def downgrade() -> None:
    op.drop_index("ix_deletions_at", table_name="deletions")
    op.drop_table("deletions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("training_consent")
