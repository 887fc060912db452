"""Queries on the usage ledger."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import Usage


class UsageLedger:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, usage: Usage) -> None:
        self.session.add(usage)
        await self.session.flush()

    async def of_user(self, user_id: uuid.UUID) -> Sequence[Usage]:
        result = await self.session.execute(
            select(Usage).where(Usage.user_id == user_id).order_by(Usage.id)
        )
        return result.scalars().all()

    async def of_message(self, message_id: uuid.UUID) -> Usage | None:
        result = await self.session.execute(select(Usage).where(Usage.message_id == message_id))
        return result.scalar_one_or_none()
