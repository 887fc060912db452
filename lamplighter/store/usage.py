"""Queries on the usage ledger."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import Usage


class UsageLedger:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, usage: Usage) -> int:
        self.session.add(usage)
        await self.session.flush()
        return usage.id

    async def update(self, usage_id: int, **values: Any) -> None:
        await self.session.execute(update(Usage).where(Usage.id == usage_id).values(**values))

    async def interrupt_unfinished(self) -> int:
        """Close the records of exchanges a crashed process left open."""
        result = await self.session.execute(
            update(Usage)
            .where(Usage.finish_reason == "in_progress")
            .values(finish_reason="interrupted")
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def of_user(self, user_id: uuid.UUID) -> Sequence[Usage]:
        result = await self.session.execute(
            select(Usage).where(Usage.user_id == user_id).order_by(Usage.id)
        )
        return result.scalars().all()

    async def of_message(self, message_id: uuid.UUID) -> Usage | None:
        result = await self.session.execute(select(Usage).where(Usage.message_id == message_id))
        return result.scalar_one_or_none()
