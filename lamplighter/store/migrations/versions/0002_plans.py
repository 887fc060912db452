"""plans table; the plan and cache flag of each usage record

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:58:10.034444
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("requests_per_minute", sa.Integer(), nullable=False),
        sa.Column("tokens_per_minute", sa.BigInteger(), nullable=False),
        sa.Column("tokens_per_day", sa.BigInteger(), nullable=False),
        sa.Column("concurrent_streams", sa.Integer(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("queue_patience_s", sa.Float(), nullable=False),
        sa.Column("ttft_slo_s", sa.Float(), nullable=False),
        sa.Column("cache_ttl_s", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("plan", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("cached")
        batch.drop_column("plan")
    op.drop_table("plans")
