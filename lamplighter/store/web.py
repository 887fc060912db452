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
        """End the unused links of an account: a new one replaces them, and a password set
        another way (Settings, another link) or a lockout ends them, as it ends the sessions."""
        await self.session.execute(
            update(Invite)
            .where(Invite.email == email, Invite.used_at.is_(None), Invite.expires_at > now)
            .values(expires_at=now)
        )

    async def delete_invites(self, email: str) -> None:
        """Forget every link of an account being deleted: a link is for the account it was
        made for, never for one made later with the same address."""
        await self.session.execute(delete(Invite).where(Invite.email == email))

    async def invite(self, token_hash: str, now: datetime) -> tuple[Invite, User] | None:
        """A link that can still be used, and its account. A link older than the account
        holding its address now was made for an earlier one (deleted before links were
        deleted with their account) and sets nothing."""
        result = await self.session.execute(
            select(Invite, User)
            .join(User, User.email == Invite.email)
            .where(
                Invite.token_hash == token_hash,
                Invite.used_at.is_(None),
                Invite.expires_at > now,
                Invite.created_at >= User.created_at,
            )
        )
        found = result.one_or_none()
        return None if found is None else (found[0], found[1])

    async def rating(self, message_id: uuid.UUID) -> Rating | None:
        return await self.session.get(Rating, message_id)

    async def add_rating(self, rating: Rating) -> None:
        self.session.add(rating)
        await self.session.flush()

    async def delete_rating(self, message_id: uuid.UUID) -> None:
        await self.session.execute(delete(Rating).where(Rating.message_id == message_id))
