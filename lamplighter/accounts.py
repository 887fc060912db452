"""Users and API keys: creating, authenticating, revoking, and the first admin account."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from lamplighter.chat import Principal
from lamplighter.credentials import (
    KEY_PATTERN,
    KEY_PREFIX,
    SCOPES,
    hash_key,
    hash_password,
    new_api_key,
    new_password,
    password_problem,
    verify_password,
)
from lamplighter.exceptions import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from lamplighter.settings import is_email
from lamplighter.store.accounts import Accounts, key_owner, refused_key
from lamplighter.store.audit import Audit
from lamplighter.store.audit import write as write_audit
from lamplighter.store.database import Database
from lamplighter.store.models import KEY_NAME_LENGTH, ApiKey, Deletion, User, utcnow
from lamplighter.store.plans import Plans
from lamplighter.store.web import WebStore
from lamplighter.traffic.plans import DEFAULT_PLANS

# last_used_at is informational; writing it at most once a minute keeps a busy key from
# turning every request into a write.
TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class CreatedKey:
    id: uuid.UUID
    secret: str
    user_email: str


@dataclass(frozen=True)
class Bootstrap:
    email: str
    password: str


async def _refusal(conn: AsyncConnection, secret: str) -> AuthenticationFailed:
    """Why a key that authenticates nobody was refused, as its holder can act on it: unknown,
    revoked, or its account suspended or banned (the reason itself is the administrators')."""
    key = await refused_key(conn, hash_key(secret))
    if key is not None and key.revoked_at is not None:
        return AuthenticationFailed(
            f"The API key {key.prefix}… was revoked at {key.revoked_at.isoformat()}. "
            "Create a new one.",
            code="revoked_api_key",
        )
    if key is not None and key.disabled_at is not None:
        if key.banned:
            return AuthenticationFailed(
                f"The API key {key.prefix}… belongs to an account that was deactivated.",
                code="account_deactivated",
            )
        until = f" until {key.disabled_until.isoformat()}" if key.disabled_until else ""
        return AuthenticationFailed(
            f"The API key {key.prefix}… belongs to an account suspended{until}. "
            "Ask an administrator if you think this is a mistake.",
            code="account_suspended",
        )
    return AuthenticationFailed(
        f"Incorrect API key provided: {secret[:6]}…. Create one with "
        "`lamplighter keys create EMAIL`."
    )


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not is_email(email):
        raise InvalidRequest(f"{email!r} is not an email address", param="email")
    return email


def key_name(name: str) -> str:
    """An API key's name as it is stored: runs of whitespace (a pasted newline) made one space,
    and refused (``param="name"``) if longer than the column or holding a NUL character. Checked
    here, whichever way a key is made, because SQLite stores any text in a ``VARCHAR`` while
    PostgreSQL refuses it: a name SQLite took would make every ``db copy`` of the store fail."""
    name = " ".join(name.split())
    if len(name) > KEY_NAME_LENGTH:
        raise InvalidRequest(
            f"a key's name may be at most {KEY_NAME_LENGTH} characters; this one has {len(name)}",
            param="name",
        )
    if "\x00" in name:
        raise InvalidRequest("a key's name cannot hold a NUL character (\\u0000)", param="name")
    return name


async def lock_out(
    session: AsyncSession, user: User, reason: str, *, until: datetime | None, banned: bool
) -> None:
    """Suspend or ban ``user`` in ``session``'s transaction and end their sessions and
    password links (a restored account asks for a new link). A ban already in force is never
    shortened into a suspension."""
    now = utcnow()
    if user.banned and not user.active(now) and not banned:
        return
    user.disabled_at, user.disabled_reason = now, reason
    user.disabled_until, user.banned = (None, True) if banned else (until, False)
    store = WebStore(session)
    await store.end_sessions_of(user.id)
    await store.retire_invites(user.email, now)


class AccountService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_user(
        self, email: str, *, password: str | None = None, admin: bool = False, plan: str = "free"
    ) -> User:
        email = normalise_email(email)
        problem = password_problem(password, related=(email,)) if password is not None else None
        if problem is not None:
            raise InvalidRequest(problem, param="password")
        async with self.db.transaction() as session:
            await self._check_plan(session, plan)
            accounts = Accounts(session)
            if await accounts.user_by_email(email) is not None:
                raise Conflict(f"a user with email {email} already exists", param="email")
            return await accounts.add_user(
                User(
                    email=email,
                    password_hash=hash_password(password) if password else None,
                    is_admin=admin,
                    plan=plan,
                    base_plan=plan,
                    created_at=utcnow(),
                )
            )

    @staticmethod
    async def _check_plan(session: AsyncSession, plan: str) -> None:
        """Refuse a plan that does not exist (before the first start, the default ones do)."""
        known = {row.name for row in await Plans(session).all()} or set(DEFAULT_PLANS)
        if plan not in known:
            raise NotFound(
                f"no plan named {plan!r}; known plans: {', '.join(sorted(known))}",
                param="plan",
                code="plan_not_found",
            )

    async def set_plan(self, email: str, plan: str, *, audit: Audit | None = None) -> User:
        return await self.change_user(email, plan=plan, audit=audit)

    async def change_user(
        self,
        email: str,
        *,
        admin: bool | None = None,
        plan: str | None = None,
        audit: Audit | None = None,
    ) -> User:
        """Make a user an admin or no longer one, and move them to another plan (their next
        request is served under it); None leaves that as it is. The last admin stays one."""
        async with self.db.transaction() as session:
            if plan is not None:
                await self._check_plan(session, plan)
            user = await self._user(session, email)
            if admin is False:
                await self._keep_an_admin(session, user, "demoted")
            if admin is not None:
                user.is_admin = admin
            if plan is not None:
                # By hand: also the plan they return to when a subscription stops covering them.
                user.plan = user.base_plan = plan
            await write_audit(session, audit)
            return user

    @staticmethod
    async def _keep_an_admin(session: AsyncSession, user: User, change: str) -> None:
        """Refuse a change that would leave no admin: nobody could run the admin API or the
        console any more."""
        if user.is_admin and await Accounts(session).admins() == [user.id]:
            raise Conflict(
                f"{user.email} is the only admin and cannot be {change}: make another "
                "user an admin first (lamplighter users set EMAIL --admin)",
                param="email",
                code="last_admin",
            )

    async def suspend(
        self,
        email: str,
        reason: str,
        *,
        until: datetime | None,
        banned: bool = False,
        audit: Audit | None = None,
    ) -> User:
        """Lock an account out (API keys and web sessions alike) until ``until``, or until
        restored; its sessions end at once."""
        async with self.db.transaction() as session:
            user = await self._user(session, email)
            await lock_out(session, user, reason, until=until, banned=banned)
            await write_audit(session, audit)
            return user

    async def restore(self, email: str, *, audit: Audit | None = None) -> User:
        async with self.db.transaction() as session:
            user = await self._user(session, email)
            user.disabled_at = user.disabled_reason = user.disabled_until = None
            user.banned = False
            await write_audit(session, audit)
            return user

    async def delete_user(self, email: str, *, audit: Audit | None = None) -> None:
        """Delete an account and everything that is theirs (conversations, messages, ratings,
        keys, sessions, password links, usage), logging the deletion by id for incremental
        exports."""
        async with self.db.transaction() as session:
            user = await self._user(session, email)
            await self._keep_an_admin(session, user, "deleted")
            await WebStore(session).delete_invites(user.email)
            session.add(Deletion(at=utcnow(), kind="user", subject_id=user.id))
            await session.delete(user)
            await write_audit(session, audit)

    async def confirm_password(
        self, user_id: uuid.UUID, password: str, *, param: str = "password"
    ) -> User:
        """The account, once ``password`` is its password (a person confirming a change to
        their own account); InvalidRequest naming ``param`` otherwise."""
        async with self.db.transaction() as session:
            user = await Accounts(session).user_by_id(user_id)
        if user is None:
            raise NotFound("There is no such account.")
        ok = user.password_hash is not None and await asyncio.to_thread(
            verify_password, user.password_hash, password
        )
        if not ok:
            raise InvalidRequest(
                "That is not your current password.", param=param, code="wrong_password"
            )
        return user

    async def change_password(self, user_id: uuid.UUID, current: str, new: str) -> User:
        """Replace the account's password, once ``current`` is confirmed; ``new`` must pass
        the rules of sign-up. Every web session and unused password link of the account ends,
        as a reset's do (a change may follow a stolen password, or a leaked link); the caller
        starts the browser's new one."""
        user = await self.confirm_password(user_id, current, param="current_password")
        problem = password_problem(new, related=(user.email,))
        if problem is not None:
            raise InvalidRequest(problem, param="new_password", code="weak_password")
        password_hash = await asyncio.to_thread(hash_password, new)
        async with self.db.transaction() as session:
            changed = await Accounts(session).user_by_id(user_id)
            if changed is None:
                raise NotFound("There is no such account.")
            changed.password_hash = password_hash
            store = WebStore(session)
            await store.end_sessions_of(user_id)
            await store.retire_invites(changed.email, utcnow())
            return changed

    @staticmethod
    async def _user(session: AsyncSession, email: str) -> User:
        user = await Accounts(session).user_by_email(normalise_email(email))
        if user is None:
            raise NotFound(f"no user with email {email}", param="email")
        return user

    async def list_users(self) -> Sequence[User]:
        async with self.db.transaction() as session:
            return await Accounts(session).list_users()

    async def create_key(
        self,
        email: str,
        name: str = "",
        *,
        scopes: Sequence[str] | None = None,
        expires_in: timedelta | None = None,
    ) -> CreatedKey:
        """A new key. Without ``scopes`` it may chat and give feedback, and administer if its
        owner is an admin; ``admin`` is refused for anyone else. ``expires_in``: never without.
        The name must pass :func:`key_name`."""
        name = key_name(name)
        async with self.db.transaction() as session:
            user = await self._user(session, email)
            return await self._add_key(session, user, name, scopes, expires_in)

    async def _add_key(
        self,
        session: AsyncSession,
        user: User,
        name: str,
        scopes: Sequence[str] | None,
        expires_in: timedelta | None,
    ) -> CreatedKey:
        if scopes is None:
            scopes = SCOPES if user.is_admin else ("chat", "feedback")
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise InvalidRequest(
                f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}",
                param="scopes",
            )
        if "admin" in scopes and not user.is_admin:
            raise InvalidRequest(f"{user.email} is not an admin: no admin scope", param="scopes")
        key = new_api_key()
        now = utcnow()
        row = await Accounts(session).add_key(
            ApiKey(
                user_id=user.id,
                name=name,
                prefix=key.prefix,
                key_hash=key.key_hash,
                created_at=now,
                scopes=[scope for scope in SCOPES if scope in scopes],
                expires_at=now + expires_in if expires_in else None,
            )
        )
        return CreatedKey(id=row.id, secret=key.secret, user_email=user.email)

    async def rotate_key(self, key_id: uuid.UUID, grace: timedelta) -> CreatedKey:
        """A new key like ``key_id`` (name, scopes, lifetime); the old one keeps working for
        ``grace`` so clients can switch, then expires."""
        async with self.db.transaction() as session:
            old = await session.get(ApiKey, key_id)
            now = utcnow()
            if (
                old is None
                or old.revoked_at is not None
                or (old.expires_at is not None and old.expires_at <= now)
            ):
                raise NotFound(f"no live API key with id {key_id}")
            user = await session.get(User, old.user_id)
            assert user is not None
            lifetime = old.expires_at - old.created_at if old.expires_at else None
            created = await self._add_key(session, user, old.name, old.scopes, lifetime)
            ends = now + grace
            old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
            return created

    async def keys_of(self, email: str) -> Sequence[ApiKey]:
        async with self.db.transaction() as session:
            return await Accounts(session).keys_of((await self._user(session, email)).id)

    async def revoke_key(
        self, key_id: uuid.UUID, *, owner: uuid.UUID | None = None, audit: Audit | None = None
    ) -> None:
        """Revoke a live key. With ``owner`` (a person revoking their own, in the web chat),
        another user's key is as unknown as one that does not exist."""
        async with self.db.transaction() as session:
            key = await session.get(ApiKey, key_id) if owner is not None else None
            if owner is not None and (key is None or key.user_id != owner):
                raise NotFound(f"no live API key with id {key_id}")
            if not await Accounts(session).revoke_key(key_id, utcnow()):
                raise NotFound(f"no live API key with id {key_id}")
            await write_audit(session, audit)

    async def keys_in(self, texts: Sequence[str]) -> list[ApiKey]:
        """Live API keys whose secret appears in ``texts`` (pasted into a prompt, say)."""
        hashes = {hash_key(match) for text in texts for match in KEY_PATTERN.findall(text)}
        if not hashes:
            return []
        async with self.db.transaction() as session:
            return list(await Accounts(session).live_keys_by_hash(hashes, utcnow()))

    async def authenticate(self, secret: str) -> Principal:
        """The principal behind an API key; AuthenticationFailed for unknown or revoked keys."""
        if not secret.startswith(KEY_PREFIX):
            raise AuthenticationFailed("Incorrect API key provided.")
        async with self.db.read() as conn:
            found = await key_owner(conn, hash_key(secret))
            if found is None:
                raise await _refusal(conn, secret)
        now = utcnow()
        if found.expires_at is not None and found.expires_at <= now:
            raise AuthenticationFailed(
                f"The API key {found.prefix}… expired at {found.expires_at.isoformat()}. "
                "Create a new one.",
                code="expired_api_key",
            )
        if found.last_used_at is None or now - found.last_used_at > TOUCH_INTERVAL:
            async with self.db.transaction() as session:
                await Accounts(session).touch_key(found.key_id, now)
        return Principal(
            user_id=found.user_id,
            email=found.email,
            plan=found.plan,
            is_admin=found.is_admin,
            api_key_id=found.key_id,
            scopes=frozenset(found.scopes),
        )

    async def bootstrap_admin(self, email: str) -> Bootstrap | None:
        """On first start (no users at all), create an admin with a random password."""
        async with self.db.transaction() as session:
            if await Accounts(session).count_users():
                return None
        password = new_password()
        try:
            await self.create_user(email, password=password, admin=True, plan="team")
        except (Conflict, IntegrityError):
            return None  # replicas starting together: another one created it first
        return Bootstrap(email=normalise_email(email), password=password)
