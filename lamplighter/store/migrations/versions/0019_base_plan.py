"""users: the plan given by hand, apart from billing, which a person returns to when their
subscription or their team's ends (they fell to the free plan)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("base_plan", sa.String(length=64), nullable=True))
    # A person no subscription covers has the plan given by hand. For one covered now, that plan
    # was overwritten: theirs stays NULL, and they fall to the free plan as before.
    op.execute(
        """
        UPDATE users SET base_plan = plan WHERE id NOT IN (
            SELECT user_id FROM subscriptions
            WHERE user_id IS NOT NULL AND status <> 'ended'
            UNION
            SELECT team_members.user_id FROM team_members
            JOIN subscriptions ON subscriptions.team_id = team_members.team_id
            WHERE subscriptions.status <> 'ended'
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("base_plan")
