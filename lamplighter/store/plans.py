"""Queries on plans."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import PlanRow


class Plans:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> Sequence[PlanRow]:
        result = await self.session.execute(
            select(PlanRow).order_by(PlanRow.priority, PlanRow.name)
        )
        return result.scalars().all()

    async def get(self, name: str) -> PlanRow | None:
        return await self.session.get(PlanRow, name)

    async def put(self, row: PlanRow) -> PlanRow:
        merged = await self.session.merge(row)
        await self.session.flush()
        return merged
