"""users: why and until when an account is suspended, and whether it is banned

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable or defaulted columns only: instant on PostgreSQL; old code works beside new.
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled_reason", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("disabled_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("banned", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("banned")
        batch.drop_column("disabled_until")
        batch.drop_column("disabled_reason")
