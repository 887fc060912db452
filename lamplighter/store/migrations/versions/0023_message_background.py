"""messages.background: an answer made as a background response, which alone can be streamed
again (its stream's numbers are positions in its text)

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-28 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("background", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("background")
