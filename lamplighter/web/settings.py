"""A person's own account settings: the page at ``GET /settings`` and its JSON API under
``/api/me``: change the password, set the custom instructions new chats begin with, download
everything of theirs as one JSON file, delete every chat, delete the account, and manage their
API keys. Training consent and the feedback bonus
are the chat's own ``/api/me/consent`` and ``/api/me``, which the page reuses.

Everything acts on the logged-in visitor only (session cookie; CSRF token on every change, see
``session.py``): no id in a path can reach another person's data. Changes that a stolen session
must not be able to make alone (a new password, deleting the account) ask for the password,
and wrong guesses count against the same throttle as the login form's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from lamplighter.api import guard
from lamplighter.api.schemas import Body
from lamplighter.api.state import Services, State
from lamplighter.chat import Principal
from lamplighter.exceptions import InvalidRequest, NotFound
from lamplighter.flywheel.feedback import rating_json
from lamplighter.flywheel.preferences import comparison_json, comparisons_in
from lamplighter.store.conversations import Conversations
from lamplighter.store.models import (
    KEY_NAME_LENGTH,
    ApiKey,
    Comparison,
    Conversation,
    Deletion,
    Message,
    Rating,
    User,
    utcnow,
)
from lamplighter.web.api import instructions_of, summary
from lamplighter.web.pages import login_url, templates
from lamplighter.web.session import (
    SESSION_COOKIE,
    WebUser,
    clear_session,
    current_visitor,
    set_session,
)

router = APIRouter(include_in_schema=False)

# Conversations read per transaction while an export streams.
EXPORT_PAGE = 100
# How many conversations "Delete all chats" reads at a time (all in one transaction).
DELETE_PAGE = 500


@router.get("/settings")
async def settings_page(request: Request, state: State) -> Response:
    visitor = await current_visitor(request, state)
    if visitor is None:
        ended = request.cookies.get(SESSION_COOKIE) is not None
        return RedirectResponse(login_url("/settings", ended=ended), status_code=303)
    who = visitor.principal
    async with state.db.transaction() as session:
        instructions = await instructions_of(session, who.user_id)
    return templates.TemplateResponse(
        request,
        "settings.html",
        {
            "csrf_token": visitor.csrf_token,
            "user": {"email": who.email, "plan": who.plan, "is_admin": who.is_admin},
            "instructions": instructions or "",
            "instructions_max": MAX_INSTRUCTIONS,
        },
        headers={"cache-control": "no-store"},
    )


@contextmanager
def _guessing(http: Request, state: Services, who: Principal) -> Iterator[None]:
    """Around a check of the visitor's password: refused while the account or address is
    locked out for wrong passwords, and a wrong one counts as a failed login."""
    address = guard.address(http)
    state.web.not_throttled(who.email, address, "wrong passwords")
    try:
        yield
    except InvalidRequest as error:
        if error.code == "wrong_password":
            state.web.throttle.failed(who.email, address)
        raise


async def _confirmed(http: Request, state: Services, who: Principal, password: str) -> None:
    """``password`` is the visitor's own, else a 400 that counts as a failed login."""
    with _guessing(http, state, who):
        await state.accounts.confirm_password(who.user_id, password)


class PasswordChange(Body):
    current_password: str = Field(max_length=4096)
    new_password: str = Field(max_length=4096)


@router.post("/api/me/password")
async def change_password(
    http: Request, body: PasswordChange, visitor: WebUser, state: State
) -> Response:
    """A new password, under sign-up's rules. Every session of the account ends (other
    browsers are logged out, as after a reset); this browser gets a new session, whose CSRF
    token the answer carries."""
    who = visitor.principal
    with _guessing(http, state, who):
        await state.accounts.change_password(who.user_id, body.current_password, body.new_password)
    state.web.throttle.succeeded(who.email)  # as a login with the new password would
    login = await state.web.start(who.user_id)
    response = JSONResponse({"changed": True, "csrf_token": login.csrf_token})
    set_session(response, http, login, state.settings.session_days)
    return response


# As ChatGPT's custom instructions: room for a paragraph about oneself and one about answers.
MAX_INSTRUCTIONS = 1500


class Instructions(Body):
    text: str = Field(max_length=MAX_INSTRUCTIONS)


@router.get("/api/me/instructions")
async def get_instructions(visitor: WebUser, state: State) -> dict[str, str]:
    async with state.db.transaction() as session:
        return {"text": await instructions_of(session, visitor.principal.user_id) or ""}


@router.put("/api/me/instructions")
async def put_instructions(body: Instructions, visitor: WebUser, state: State) -> dict[str, str]:
    """What every chat the visitor starts from now on begins with, as its system message
    (chats already started keep theirs); empty text: none."""
    text = body.text.strip()
    async with state.db.transaction() as session:
        user = await session.get(User, visitor.principal.user_id)
        if user is None:  # deleted in another tab meanwhile
            raise NotFound("There is no such account.")
        user.custom_instructions = text or None
    return {"text": text}


def key_json(key: ApiKey, now: datetime) -> dict[str, Any]:
    """An API key as its owner sees it: never the secret, which is not stored."""
    if key.revoked_at is not None:
        status = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        status = "expired"
    else:
        status = "live"

    def when(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    return {
        "id": str(key.id),
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "status": status,
        "created_at": key.created_at.isoformat(),
        "last_used_at": when(key.last_used_at),
        "expires_at": when(key.expires_at),
        "revoked_at": when(key.revoked_at),
    }


async def _keys(state: Services, who: Principal) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [key_json(key, now) for key in await state.accounts.keys_of(who.email)]


@router.get("/api/me/keys")
async def list_keys(visitor: WebUser, state: State) -> dict[str, Any]:
    """The visitor's API keys, oldest first, revoked and expired ones included."""
    return {"data": await _keys(state, visitor.principal)}


class NewKey(Body):
    # Its white space is made single, and it is checked again, by ``accounts.key_name``.
    name: str = Field(default="", max_length=KEY_NAME_LENGTH)
    expires_days: int | None = Field(default=None, ge=1, le=3650, strict=True)


@router.post("/api/me/keys", status_code=201)
async def create_key(body: NewKey, visitor: WebUser, state: State) -> dict[str, Any]:
    """A new key with the default scopes (as ``lamplighter keys create``); its secret is in
    this answer and nowhere else, ever."""
    who = visitor.principal
    lifetime = timedelta(days=body.expires_days) if body.expires_days else None
    created = await state.accounts.create_key(who.email, body.name, expires_in=lifetime)
    made = next(key for key in await _keys(state, who) if key["id"] == str(created.id))
    return {**made, "secret": created.secret}


@router.delete("/api/me/keys/{key_id}", status_code=204)
async def revoke_key(key_id: uuid.UUID, visitor: WebUser, state: State) -> None:
    """Revoke one of the visitor's keys; it stops working at once. Another person's key is a
    404, as one that does not exist."""
    try:
        await state.accounts.revoke_key(key_id, owner=visitor.principal.user_id)
    except NotFound:
        raise NotFound(
            "There is no such API key, or it was revoked already.", code="api_key_not_found"
        ) from None


@router.delete("/api/me/conversations")
async def delete_conversations(visitor: WebUser, state: State) -> dict[str, int]:
    """Delete every conversation of the visitor's (the chat's and the API's), as deleting each
    one does: messages, ratings and comparisons go with it, and each deletion is logged by id
    so that the next incremental export carries it. One transaction: all or none."""
    deleted = 0
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        now = utcnow()
        while page := await conversations.list_for(visitor.principal.user_id, limit=DELETE_PAGE):
            for conversation in page:
                await conversations.delete(conversation.id)
                session.add(Deletion(at=now, kind="conversation", subject_id=conversation.id))
            deleted += len(page)
    return {"deleted": deleted}


class AccountDeletion(Body):
    password: str = Field(max_length=4096)


@router.delete("/api/me")
async def delete_account(
    http: Request, body: AccountDeletion, visitor: WebUser, state: State
) -> Response:
    """Delete the visitor's account and everything of theirs, as ``lamplighter users delete``
    does (the last admin is refused, 409 ``last_admin``), once the password confirms it; the
    session cookie goes with it."""
    who = visitor.principal
    await _confirmed(http, state, who, body.password)
    await state.accounts.delete_user(who.email)
    response = Response(status_code=204)
    clear_session(response, http)
    return response


def _message_row(message: Message, rating: Rating | None, hidden: set[uuid.UUID]) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "parent_id": str(message.parent_id) if message.parent_id else None,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "finish_reason": message.finish_reason,
        # Unknown until the side-by-side is voted on, as on the page.
        "model": None if message.id in hidden else message.model,
        "author": message.author,
        "created_at": message.created_at.isoformat(),
        "rating": rating_json(rating),
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
    }


def _conversation_row(
    conversation: Conversation,
    nodes: Sequence[tuple[Message, Rating | None]],
    compared: list[Comparison],
) -> dict[str, Any]:
    hidden = {
        answer
        for c in compared
        if c.kind == "side_by_side" and c.winner is None
        for answer in (c.a_id, c.b_id)
    }
    leaf = conversation.current_leaf_id
    return {
        **summary(conversation),
        "current_leaf_id": str(leaf) if leaf else None,
        "messages": [_message_row(message, rating, hidden) for message, rating in nodes],
        "comparisons": [comparison_json(c) for c in compared],
    }


async def _conversations(state: Services, user_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    """Every conversation of ``user_id``'s with all its branches, a page per transaction."""
    after = None
    while True:
        async with state.db.transaction() as session:
            conversations = Conversations(session)
            page = await conversations.list_for(user_id, limit=EXPORT_PAGE, after=after)
            rows = [
                _conversation_row(
                    conversation,
                    await conversations.tree(conversation.id),
                    await comparisons_in(session, conversation.id),
                )
                for conversation in page
            ]
        for row in rows:
            yield row
        if len(page) < EXPORT_PAGE:
            return
        after = (page[-1].updated_at, page[-1].id)


@router.get("/api/me/export")
async def export(visitor: WebUser, state: State) -> Response:
    """Everything the visitor wrote and got, as one JSON file to download: the account, the
    custom instructions, the training consent, the feedback bonus, API keys (never their
    secrets), and every conversation with all its branches, ratings and comparisons (verdicts
    and votes). It streams, a page of conversations at a time."""
    who = visitor.principal
    async with state.db.transaction() as session:
        instructions = await instructions_of(session, who.user_id)
    head = {
        "exported_at": utcnow().isoformat(),
        "account": {
            "id": str(who.user_id),
            "email": who.email,
            "plan": who.plan,
            "is_admin": who.is_admin,
        },
        "custom_instructions": instructions,
        "training_consent": await state.feedback.consent(who),
        "feedback_credits": await state.credits.summary(who.user_id),
        "api_keys": await _keys(state, who),
    }

    async def body() -> AsyncIterator[bytes]:
        yield json.dumps(head, ensure_ascii=False)[:-1].encode() + b', "conversations": ['
        first = True
        async for row in _conversations(state, who.user_id):
            yield (b"" if first else b", ") + json.dumps(row, ensure_ascii=False).encode()
            first = False
        yield b"]}\n"

    name = f"lamplighter-data-{utcnow():%Y-%m-%d}.json"
    return StreamingResponse(
        body(),
        media_type="application/json",
        headers={
            "content-disposition": f'attachment; filename="{name}"',
            "cache-control": "no-store",
        },
    )
