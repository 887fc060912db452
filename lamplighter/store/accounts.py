"""Queries on users and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from lamplighter.store.models import ApiKey, User, user_active, utcnow


class KeyOwner(NamedTuple):
    """An API key, as much as authenticating a request needs, and its owner."""

    key_id: uuid.UUID
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    last_used_at: datetime | None
    user_id: uuid.UUID
    email: str
    plan: str
    is_admin: bool


# Built once, values bound at execution: every API request authenticates.
_KEY_OWNER = (
    select(
        ApiKey.id,
        ApiKey.prefix,
        ApiKey.scopes,
        ApiKey.expires_at,
        ApiKey.last_used_at,
        User.id,
        User.email,
        User.plan,
        User.is_admin,
    )
    .join(User, User.id == ApiKey.user_id)
    .where(
        ApiKey.key_hash == bindparam("key_hash"),
        ApiKey.revoked_at.is_(None),
        user_active(bindparam("now", type_=User.disabled_until.type)),
    )
)


async def key_owner(conn: AsyncConnection, key_hash: str) -> KeyOwner | None:
    """The live key with this hash and its enabled owner, or None. Columns, not ORM objects,
    on a plain connection (``Database.read``): every API request asks."""
    result = await conn.execute(_KEY_OWNER, {"key_hash": key_hash, "now": utcnow()})
    row = result.first()
    return None if row is None else KeyOwner(*row)


class RefusedKey(NamedTuple):
    """A key that authenticates nobody, as much as saying why needs."""

    prefix: str
    revoked_at: datetime | None
    banned: bool
    disabled_at: datetime | None
    disabled_until: datetime | None


_REFUSED_KEY = (
    select(ApiKey.prefix, ApiKey.revoked_at, User.banned, User.disabled_at, User.disabled_until)
    .join(User, User.id == ApiKey.user_id)
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


async def refused_key(conn: AsyncConnection, key_hash: str) -> RefusedKey | None:
    """The key with this hash and its owner's state, whatever they are, to say why it was
    refused (``key_owner`` found nothing); asked only of keys that fail."""
    row = (await conn.execute(_REFUSED_KEY, {"key_hash": key_hash})).first()
    return None if row is None else RefusedKey(*row)


class Accounts:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def user_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email.lower()))
        return result.scalar_one_or_none()

    async def user_by_id(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def add_user(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        return user

    async def list_users(self) -> Sequence[User]:
        result = await self.session.execute(select(User).order_by(User.created_at))
        return result.scalars().all()

    async def count_users(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(User)) or 0)

    async def admins(self) -> list[uuid.UUID]:
        """Every admin's id, their rows locked (PostgreSQL) in one order: of two demotions at
        once, the second waits and then sees the first's, so they cannot leave no admin."""
        result = await self.session.execute(
            select(User.id).where(User.is_admin.is_(True)).order_by(User.id).with_for_update()
        )
        return list(result.scalars())

    async def add_key(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        await self.session.flush()
        return key

    async def touch_key(self, key_id: uuid.UUID, when: datetime) -> None:
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when)
        )

    async def revoke_key(self, key_id: uuid.UUID, when: datetime) -> bool:
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=when)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def live_keys_by_hash(self, hashes: set[str], now: datetime) -> Sequence[ApiKey]:
        result = await self.session.execute(
            select(ApiKey).where(
                ApiKey.key_hash.in_(hashes),
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )
        return result.scalars().all()

    async def keys_of(self, user_id: uuid.UUID) -> Sequence[ApiKey]:
        result = await self.session.execute(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)
        )
        return result.scalars().all()
