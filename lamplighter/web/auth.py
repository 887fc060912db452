"""Web logins: password check, sessions, sign-up and invites.

A session is a random token in an ``HttpOnly`` cookie; the store keeps only its SHA-256. Each
session has its own CSRF token, which the page echoes on every state-changing request. Login and
sign-up answer the same way whether or not the account exists (and take about as long).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from lamplighter.accounts import AccountService, normalise_email
from lamplighter.chat import Principal
from lamplighter.credentials import hash_key, hash_password, password_problem, verify_password
from lamplighter.exceptions import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
)
from lamplighter.store.accounts import Accounts
from lamplighter.store.database import Database
from lamplighter.store.models import Invite, WebSession, utcnow
from lamplighter.store.web import WebStore
from lamplighter.web.throttle import LoginThrottle, describe

INVITE_DAYS = 7
# Verified against when the email is unknown, so a failed login costs the same either way.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
BAD_LOGIN = "Wrong email or password."


@dataclass(frozen=True)
class Login:
    """What a browser holds once logged in: the cookie's token and the session's CSRF token."""

    token: str
    csrf_token: str


@dataclass(frozen=True)
class Invitation:
    """What a password link is for: the account, and whether it already has a password."""

    email: str
    resets: bool


@dataclass(frozen=True)
class Visitor:
    principal: Principal
    csrf_token: str
    # The hashed network the request came from (see flywheel/credits.origin_of).
    origin: str | None = None


def new_token() -> str:
    return secrets.token_urlsafe(32)


class WebAuth:
    def __init__(
        self,
        db: Database,
        accounts: AccountService,
        session_days: int,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.db = db
        self.accounts = accounts
        self.lifetime = timedelta(days=session_days)
        self.throttle = throttle or LoginThrottle()

    async def login(self, email: str, password: str, address: str) -> Login:
        """A new session for the right email and password, unless attempts for this account,
        address or network are being throttled (429); AuthenticationFailed otherwise."""
        self.not_throttled(email, address, "login attempts")
        try:
            email = normalise_email(email)
        except InvalidRequest:
            self.throttle.failed(email, address)
            raise AuthenticationFailed(BAD_LOGIN) from None
        async with self.db.transaction() as session:
            user = await Accounts(session).user_by_email(email)
        stored = user.password_hash if user and user.password_hash else _DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, stored, password)
        if user is None or not user.active(utcnow()) or not user.password_hash or not ok:
            self.throttle.failed(email, address)
            raise AuthenticationFailed(BAD_LOGIN)
        self.throttle.succeeded(email)
        return await self.start(user.id)

    def not_throttled(self, email: str, address: str, tried: str) -> None:
        """Refuse (429, saying too many ``tried``) while this account, address or network is
        locked out for wrong passwords."""
        wait = self.throttle.retry_after(email, address)
        if wait > 0:
            raise RateLimited(f"Too many {tried}. Try again in {describe(wait)}.", retry_after=wait)

    async def start(self, user_id: uuid.UUID) -> Login:
        """A new session for the account (its password or link already checked)."""
        login = Login(token=new_token(), csrf_token=new_token())
        now = utcnow()
        async with self.db.transaction() as session:
            store = WebStore(session)
            await store.end_expired(now)
            await store.add_session(
                WebSession(
                    token_hash=hash_key(login.token),
                    user_id=user_id,
                    csrf_token=login.csrf_token,
                    created_at=now,
                    expires_at=now + self.lifetime,
                )
            )
        return login

    async def visitor(self, token: str) -> Visitor | None:
        """Who holds a session cookie, if the session is live and the account enabled."""
        async with self.db.transaction() as session:
            found = await WebStore(session).session_with_user(hash_key(token), utcnow())
        if found is None:
            return None
        row, user = found
        principal = Principal(
            user_id=user.id, email=user.email, plan=user.plan, is_admin=user.is_admin
        )
        return Visitor(principal, row.csrf_token)

    async def logout(self, token: str) -> None:
        async with self.db.transaction() as session:
            await WebStore(session).end_session(hash_key(token))

    async def logout_everywhere(self, user_id: uuid.UUID) -> None:
        async with self.db.transaction() as session:
            await WebStore(session).end_sessions_of(user_id)

    async def signup(self, email: str, password: str, plan: str) -> Login:
        try:
            user = await self.accounts.create_user(email, password=password, plan=plan)
        except Conflict:
            # Saying "taken" would tell anyone which emails have accounts here.
            raise InvalidRequest(
                "That email cannot be used to sign up. If it is yours, log in instead."
            ) from None
        return await self.start(user.id)

    async def invite(self, email: str, plan: str | None = None) -> str:
        """Make an account for ``email`` with no password (on ``plan``, else free), and a
        one-time token with which its owner sets one. Inviting an account that has no password
        yet again makes a new link (the lost or expired one stops working), and puts it on
        ``plan`` if given; an account with a password is a Conflict (a reset is for that)."""
        try:
            await self.accounts.create_user(email, plan=plan or "free")
        except Conflict:
            async with self.db.transaction() as session:
                user = await Accounts(session).user_by_email(normalise_email(email))
            if user is None or user.password_hash is not None:
                raise Conflict(
                    f"{email} has set a password already: `lamplighter users reset-password "
                    f"{email}` makes a link to choose a new one",
                    param="email",
                ) from None
            if plan is not None and plan != user.plan:
                await self.accounts.set_plan(email, plan)
        return await self.password_link(email)

    async def password_link(self, email: str) -> str:
        """A one-time token (valid ``INVITE_DAYS``) with which the owner of an existing account
        sets its password: the first one (an invitation, sent again when lost or expired) or a
        new one (a reset). The account's earlier links stop working."""
        email = normalise_email(email)
        token = new_token()
        now = utcnow()
        async with self.db.transaction() as session:
            user = await Accounts(session).user_by_email(email)
            if user is None:
                raise NotFound(f"no user with email {email}")
            store = WebStore(session)
            await store.retire_invites(email, now)
            await store.add_invite(
                Invite(
                    token_hash=hash_key(token),
                    email=email,
                    plan=user.plan,
                    created_at=now,
                    expires_at=now + timedelta(days=INVITE_DAYS),
                )
            )
        return token

    async def invitation(self, token: str) -> Invitation:
        """Whose password a link sets, and whether it replaces one."""
        async with self.db.transaction() as session:
            found = await WebStore(session).invite(hash_key(token), utcnow())
        if found is None:
            raise NotFound("This link is not valid any more. Ask for a new one.")
        invite, user = found
        return Invitation(invite.email, resets=user.password_hash is not None)

    async def accept(self, token: str, password: str) -> Login:
        """Set the account's password (the link works once, and the account's other links
        end with it), end its other web sessions (a reset may follow a stolen password) and
        log it in."""
        email = (await self.invitation(token)).email
        problem = password_problem(password, related=(email,))
        if problem is not None:
            raise InvalidRequest(problem, param="password")
        now = utcnow()
        async with self.db.transaction() as session:
            store = WebStore(session)
            found = await store.invite(hash_key(token), now)
            if found is None:
                raise NotFound("This link is not valid any more. Ask for a new one.")
            invite, user = found
            invite.used_at = now
            user.password_hash = hash_password(password)
            await store.retire_invites(user.email, now)
            await store.end_sessions_of(user.id)
            user_id = user.id
        return await self.start(user_id)
