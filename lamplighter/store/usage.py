"""Queries on the usage ledger."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import IN_PROGRESS, Usage

# Built once, values bound at execution: the chat's hot path writes every exchange's row.
_LEDGER = cast(Table, Usage.__table__)
_INSERT = insert(_LEDGER)
_UPDATE = update(_LEDGER).where(_LEDGER.c.id == bindparam("row"))


class UsageLedger:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, values: dict[str, Any]) -> int:
        """A new row (a plain INSERT: the chat's hot path); its id."""
        result = await self.session.execute(_INSERT, values)
        return int(result.inserted_primary_key[0])  # type: ignore[attr-defined]

    async def update(self, usage_id: int, **values: Any) -> None:
        await self.session.execute(_UPDATE, {"row": usage_id, **values})

    async def interrupt_unfinished(self, only: Collection[int] | None = None) -> int:
        """Close the records of exchanges a crashed process left open (of those ``only``)."""
        stale = update(Usage).where(text(IN_PROGRESS))
        if only is not None:
            stale = stale.where(Usage.id.in_(only))
        result = await self.session.execute(stale.values(finish_reason="interrupted"))
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def alive(self, ids: Collection[int], when: datetime) -> None:
        """The exchanges of these rows still run (see ``silent_since``)."""
        await self.session.execute(
            update(Usage).where(Usage.id.in_(ids), text(IN_PROGRESS)).values(alive_at=when)
        )

    async def silent_since(self, when: datetime) -> list[tuple[int, uuid.UUID | None]]:
        """The rows (and their answers) of exchanges in progress that no replica has said it
        runs since ``when``: their replica died."""
        last = func.coalesce(Usage.alive_at, Usage.created_at)
        found = await self.session.execute(
            select(Usage.id, Usage.message_id).where(text(IN_PROGRESS), last < when)
        )
        return [(row.id, row.message_id) for row in found]

    async def of_user(self, user_id: uuid.UUID) -> Sequence[Usage]:
        result = await self.session.execute(
            select(Usage).where(Usage.user_id == user_id).order_by(Usage.id)
        )
        return result.scalars().all()

    async def of_message(self, message_id: uuid.UUID) -> Usage | None:
        result = await self.session.execute(select(Usage).where(Usage.message_id == message_id))
        return result.scalar_one_or_none()
