"""preference signals (regeneration verdicts, corrections, side-by-side votes) and credits

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 22:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("author", sa.String(length=16), nullable=True))
    with op.batch_alter_table("ratings") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=32), nullable=True))
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("question_id", sa.Uuid(), nullable=False),
        sa.Column("a_id", sa.Uuid(), nullable=False),
        sa.Column("b_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("a_variant", sa.String(length=240), nullable=False),
        sa.Column("b_variant", sa.String(length=240), nullable=False),
        sa.Column("winner", sa.String(length=16), nullable=True),
        sa.Column("discarded", sa.String(length=64), nullable=True),
        sa.Column("origin", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["question_id"], ["messages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["a_id"], ["messages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["b_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_comparisons_user_id", "comparisons", ["user_id"])
    op.create_index("ix_comparisons_conversation_id", "comparisons", ["conversation_id"])
    op.create_index("ix_comparisons_voted_at", "comparisons", ["voted_at"])
    op.create_table(
        "credits",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("signal", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_credits_user_id", "credits", ["user_id"])
    op.create_index("ux_credits_signal", "credits", ["signal", "subject_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_credits_signal", table_name="credits")
    op.drop_index("ix_credits_user_id", table_name="credits")
    op.drop_table("credits")
    op.drop_index("ix_comparisons_voted_at", table_name="comparisons")
    op.drop_index("ix_comparisons_conversation_id", table_name="comparisons")
    op.drop_index("ix_comparisons_user_id", table_name="comparisons")
    op.drop_table("comparisons")
    with op.batch_alter_table("ratings") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("author")
