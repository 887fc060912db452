"""Queries on browser sessions, invites and ratings."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import Invite, Rating, User, WebSession, user_active


class WebStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_session(self, row: WebSession) -> None:
        self.session.add(row)
        await self.session.flush()

    async def session_with_user(
        self, token_hash: str, now: datetime
    ) -> tuple[WebSession, User] | None:
        """A live session and its (enabled) user."""
        result = await self.session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(
                WebSession.token_hash == token_hash,
                WebSession.expires_at > now,
                user_active(now),
            )
        )
        found = result.one_or_none()
        return None if found is None else (found[0], found[1])

    async def end_session(self, token_hash: str) -> None:
        await self.session.execute(delete(WebSession).where(WebSession.token_hash == token_hash))

    async def end_sessions_of(self, user_id: uuid.UUID) -> None:
        await self.session.execute(delete(WebSession).where(WebSession.user_id == user_id))

    async def end_expired(self, now: datetime) -> None:
        await self.session.execute(delete(WebSession).where(WebSession.expires_at <= now))

    async def add_invite(self, invite: Invite) -> None:
        self.session.add(invite)
        await self.session.flush()

    async def retire_invites(self, email: str, now: datetime) -> None:
        """End the unused links of an account (a new one replaces them)."""
        await self.session.execute(
            update(Invite)
            .where(Invite.email == email, Invite.used_at.is_(None), Invite.expires_at > now)
            .values(expires_at=now)
        )

    async def invite(self, token_hash: str, now: datetime) -> Invite | None:
        """An invite that can still be used."""
        result = await self.session.execute(
            select(Invite).where(
                Invite.token_hash == token_hash, Invite.used_at.is_(None), Invite.expires_at > now
            )
        )
        return result.scalar_one_or_none()

    async def rating(self, message_id: uuid.UUID) -> Rating | None:
        return await self.session.get(Rating, message_id)

    async def add_rating(self, rating: Rating) -> None:
        self.session.add(rating)
        await self.session.flush()

    async def delete_rating(self, message_id: uuid.UUID) -> None:
        await self.session.execute(delete(Rating).where(Rating.message_id == message_id))
