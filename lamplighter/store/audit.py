"""The audit log: every admin action, written in the same transaction as the change itself, so
a change without its entry (or an entry without its change) cannot happen."""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import AuditEntry, utcnow


@dataclass(frozen=True)
class Audit:
    """An admin action to write down."""

    actor_id: uuid.UUID | None
    actor_email: str
    action: str
    target: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def by_operator(
        cls, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> Audit:
        """An action taken with the ``lamplighter`` command: no account did it, so the entry
        names the operating-system user and machine (``cli:alice@db-admin-1``)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a bare container)
            user = "unknown"
        return cls(None, f"cli:{user}@{socket.gethostname()}", action, target, details or {})

    async def write(self, session: AsyncSession) -> None:
        session.add(
            AuditEntry(
                at=utcnow(),
                actor_id=self.actor_id,
                actor_email=self.actor_email,
                action=self.action,
                target=self.target,
                details=dict(self.details),
            )
        )
        await session.flush()


async def write(session: AsyncSession, audit: Audit | None) -> None:
    if audit is not None:
        await audit.write(session)


class AuditLog:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def recent(self, limit: int, before: int | None = None) -> Sequence[AuditEntry]:
        """The newest entries first; ``before`` pages back from an entry's id."""
        statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if before is not None:
            statement = statement.where(AuditEntry.id < before)
        return (await self.session.execute(statement)).scalars().all()
