"""users: when the training consent was last changed, so that an incremental export gives all
the data of a person who consented after the export before it

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27 11:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("training_consent_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("training_consent_at")
