"""messages: the structured-output format an answer was generated under, and the API client's
metadata for it (a stored chat completion's or response's ``metadata``)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 08:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("response_format", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("request_metadata", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("request_metadata")
        batch.drop_column("response_format")
