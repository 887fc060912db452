"""messages: a response's own instructions and the response it continued

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("instructions", sa.Text(), nullable=True))
        batch.add_column(sa.Column("previous_response_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("previous_response_id")
        batch.drop_column("instructions")
