"""The JSON API the chat page speaks, under ``/api``: the visitor's plan and limits, their
conversations (list, search, read, rename, delete, choose the branch shown), ratings, and
``POST /api/chat``, which streams an answer as named server-sent events.

Everything is scoped to the logged-in visitor; another user's conversation or message is a 404,
exactly like one that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from lamplighter.api import guard
from lamplighter.api.openai import leak_warning
from lamplighter.api.responses import EventStreamResponse, unless_disconnected
from lamplighter.api.schemas import Body
from lamplighter.api.state import Services, State
from lamplighter.api.stored import stop_answer
from lamplighter.chat import Exchange, Placement, Principal
from lamplighter.conversation.threading import Turn, title_from
from lamplighter.engines.base import Chunk, GenerationRequest
from lamplighter.exceptions import APIError, InvalidRequest, NotFound, PermissionDenied
from lamplighter.flywheel.feedback import RATING_REASONS, RatingBody, rating_json
from lamplighter.flywheel.policy import Variant
from lamplighter.flywheel.preferences import (
    CorrectionBody,
    VerdictBody,
    VoteBody,
    asks_verdict,
    comparison_json,
    comparisons_in,
)
from lamplighter.store.conversations import Conversations
from lamplighter.store.models import Conversation, Deletion, Message, Rating, User, utcnow
from lamplighter.web.markdown import render
from lamplighter.web.session import WebUser

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", include_in_schema=False)

# How often a streaming answer's rendered HTML is sent at most, and the most of its time spent
# rendering (1/RENDER_SHARE); deltas go out as they come.
HTML_INTERVAL_S = 0.1
RENDER_SHARE = 10
# The page's sampling: a little below 1 keeps small models on topic.
TEMPERATURE, TOP_P = 0.7, 0.95
# The sidebar's cursors count time from here, in microseconds (the stores' precision).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _no_conversation() -> NotFound:
    return NotFound("There is no such conversation.", code="conversation_not_found")


def _no_message() -> NotFound:
    return NotFound("There is no such message.", code="message_not_found")


def summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title or "New conversation",
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def message_json(
    message: Message, rating: Rating | None = None, *, hide_model: bool = False
) -> dict[str, Any]:
    """A message as the page shows it; ``hide_model`` while it is one side of a side-by-side
    not voted on yet."""
    assistant = message.role == "assistant"
    return {
        "id": str(message.id),
        "parent_id": str(message.parent_id) if message.parent_id else None,
        "role": message.role,
        "content": message.content,
        "html": render(message.content) if assistant else None,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "model": None if hide_model else message.model,
        "author": message.author,
        "created_at": message.created_at.isoformat(),
        "rating": rating_json(rating),
        # Tool use, in a conversation an API client had: the calls an answer made, and the
        # call a tool's message answers.
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
    }


@router.get("/me")
async def me(visitor: WebUser, state: State) -> dict[str, Any]:
    who = visitor.principal
    plan = state.plans.get(who.plan)
    left = await state.limiter.remaining(plan, who.user_id, await state.credits.bonus(who.user_id))

    def limit(name: str) -> dict[str, int]:
        return {"limit": left[name][0], "remaining": left[name][1]}

    return {
        "email": who.email,
        "plan": plan.name,
        "is_admin": who.is_admin,
        "models": state.models_for(plan.name),
        "default_model": _default_model(state, plan.name),
        "limits": {
            "requests_per_minute": limit("requests"),
            "tokens_per_minute": limit("tokens"),
            "tokens_per_day": limit("daily_tokens"),
            "concurrent_streams": {"limit": plan.concurrent_streams},
        },
        "rating_reasons": {
            "up": [{"id": k, "label": v} for k, v in RATING_REASONS[1].items()],
            "down": [{"id": k, "label": v} for k, v in RATING_REASONS[-1].items()],
        },
        "credits": await state.credits.summary(who.user_id),
    }


def _default_model(state: Services, plan_name: str) -> str | None:
    models = state.models_for(plan_name)
    if state.settings.model_name in models:
        return state.settings.model_name
    return models[0] if models else None


def _cursor(conversation: Conversation) -> str:
    """Where the next page of the sidebar starts: after ``conversation``, the last of this one,
    by the list's order (``updated_at``, then ``id``), packed into 32 URL-safe characters."""
    micros = (conversation.updated_at - _EPOCH) // _MICROSECOND
    packed = struct.pack(">q", micros) + conversation.id.bytes
    return base64.urlsafe_b64encode(packed).decode()


def _after(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The place a cursor from ``_cursor`` names; anything else is a 400."""
    try:
        packed = base64.b64decode(cursor, altchars=b"-_", validate=True)
        (micros,) = struct.unpack(">q", packed[:8])
        return _EPOCH + micros * _MICROSECOND, uuid.UUID(bytes=packed[8:])
    except (ValueError, struct.error, OverflowError):
        raise InvalidRequest(
            "This cursor is not one the conversation list gave; start again from the first page.",
            param="cursor",
            code="invalid_cursor",
        ) from None


@router.get("/conversations")
async def list_conversations(
    visitor: WebUser,
    state: State,
    q: str = Query(default="", max_length=200),
    limit: int = Query(default=100, ge=1, le=500),
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of the visitor's conversations, most recently active first: ``limit`` of them,
    after the place ``cursor`` (the previous page's ``next_cursor``) names. ``has_more`` says
    whether more follow, and ``next_cursor`` asks for them."""
    after = _after(cursor) if cursor is not None else None
    async with state.db.transaction() as session:
        found = await Conversations(session).list_for(
            visitor.principal.user_id, q.strip(), limit + 1, after
        )
    page, more = found[:limit], len(found) > limit
    return {
        "data": [summary(conversation) for conversation in page],
        "has_more": more,
        "next_cursor": _cursor(page[-1]) if more else None,
    }


async def _owned(
    conversations: Conversations, visitor: WebUser, conversation_id: uuid.UUID
) -> Conversation:
    conversation = await conversations.owned(visitor.principal.user_id, conversation_id)
    if conversation is None:
        raise _no_conversation()
    return conversation


@router.get("/conversations/{conversation_id}")
async def get_conversation(
    conversation_id: uuid.UUID, visitor: WebUser, state: State
) -> dict[str, Any]:
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        conversation = await _owned(conversations, visitor, conversation_id)
        nodes = await conversations.tree(conversation.id)
        comparisons = await comparisons_in(session, conversation.id)
    for message, _ in nodes:
        if message.status == "in_progress" and message.role == "assistant":
            await _watch(state, message.id)
    hidden = {
        answer
        for c in comparisons
        if c.kind == "side_by_side" and c.winner is None
        for answer in (c.a_id, c.b_id)
    }
    return {
        **summary(conversation),
        "current_leaf_id": str(conversation.current_leaf_id)
        if conversation.current_leaf_id
        else None,
        "messages": [
            message_json(message, rating, hide_model=message.id in hidden)
            for message, rating in nodes
        ],
        # A regeneration's verdict not given (yet) is bookkeeping, not something to show.
        "comparisons": [
            comparison_json(c)
            for c in comparisons
            if c.kind != "regeneration" or c.winner is not None
        ],
    }


class ConversationChanges(Body):
    title: str | None = Field(default=None, max_length=200)
    current_leaf_id: uuid.UUID | None = None

    @field_validator("title")
    @classmethod
    def _title(cls, title: str | None) -> str | None:
        if title is not None and not " ".join(title.split()):
            raise ValueError("a title cannot be empty")
        return " ".join(title.split()) if title is not None else None


@router.patch("/conversations/{conversation_id}")
async def change_conversation(
    conversation_id: uuid.UUID, changes: ConversationChanges, visitor: WebUser, state: State
) -> dict[str, Any]:
    """Rename a conversation, or remember which branch of it is shown."""
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        conversation = await _owned(conversations, visitor, conversation_id)
        if changes.title is not None:
            conversation.title = changes.title
        if changes.current_leaf_id is not None:
            leaf = await conversations.message_of(
                visitor.principal.user_id, changes.current_leaf_id
            )
            if leaf is None or leaf.conversation_id != conversation.id:
                raise _no_message()
            conversation.current_leaf_id = leaf.id
        return summary(conversation)


@router.delete("/conversations/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: uuid.UUID, visitor: WebUser, state: State) -> None:
    """Delete a conversation for good: its messages and ratings go with it (usage records
    stay, without the link to the deleted answer); the deletion is logged (by id only) so that
    incremental exports carry it."""
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        await _owned(conversations, visitor, conversation_id)
        await conversations.delete(conversation_id)
        session.add(Deletion(at=utcnow(), kind="conversation", subject_id=conversation_id))


async def _watch(state: Services, answer_id: uuid.UUID) -> None:
    """A page shows answer ``answer_id`` while it is written (it polls the chat): one whose
    own page went away goes on, on this replica or, through the bulletin, on another."""
    if not state.chat.watch(answer_id) and state.bulletin is not None:
        await state.bulletin.publish("answer.watch", id=answer_id.hex)


@router.post("/messages/{message_id}/stop")
async def stop(message_id: uuid.UUID, visitor: WebUser, state: State) -> dict[str, Any]:
    """The Stop button: cut the answer being written now, with what it has so far (without
    this, a page that only hangs up leaves it going on for a while; see ``chat.LINGER_S``).
    An answer written on another replica is told through the bulletin."""
    async with state.db.transaction() as session:
        answer = await Conversations(session).message_of(visitor.principal.user_id, message_id)
    if answer is None or answer.role != "assistant":
        raise _no_message()
    stopped = await stop_answer(state, answer)  # here: settled when the page reads it
    return {"id": str(answer.id), "stopped": stopped is not None or answer.status == "in_progress"}


@router.put("/messages/{message_id}/rating")
async def rate(
    message_id: uuid.UUID, body: RatingBody, visitor: WebUser, state: State
) -> dict[str, Any]:
    """Thumbs up or down on an answer, with optional reasons and comment; rating again
    replaces the earlier rating. The reasons must be the rating's own: what was good about a
    thumbs-up, what was wrong with a thumbs-down."""
    return await state.feedback.rate(
        visitor.principal, message_id, body.rating, body.reasons, body.comment, visitor.origin
    )


@router.delete("/messages/{message_id}/rating", status_code=204)
async def unrate(message_id: uuid.UUID, visitor: WebUser, state: State) -> None:
    await state.feedback.unrate(visitor.principal, message_id)


@router.put("/messages/{message_id}/verdict")
async def verdict(
    message_id: uuid.UUID, body: VerdictBody, visitor: WebUser, state: State
) -> dict[str, Any]:
    """Whether a regenerated answer is better, worse or the same as the one before it."""
    return await state.preferences.verdict(
        visitor.principal, message_id, body.verdict, visitor.origin
    )


@router.post("/messages/{message_id}/correction", status_code=201)
async def correction(
    message_id: uuid.UUID, body: CorrectionBody, visitor: WebUser, state: State
) -> dict[str, Any]:
    """The person's improved version of an answer: stored beside it and shown from now on."""
    rewrite, comparison = await state.preferences.correct(
        visitor.principal, message_id, body.content, visitor.origin
    )
    return {"message": message_json(rewrite), "comparison": comparison}


@router.put("/comparisons/{comparison_id}/vote")
async def vote(
    comparison_id: uuid.UUID, body: VoteBody, visitor: WebUser, state: State
) -> dict[str, Any]:
    """A, B, tie or both bad, once; the answer reveals which variant wrote which."""
    return await state.preferences.vote(
        visitor.principal, comparison_id, body.winner, visitor.origin
    )


class Consent(Body):
    use_for_training: bool | None = Field(strict=True)


@router.get("/me/consent")
async def get_consent(visitor: WebUser, state: State) -> dict[str, Any]:
    """Whether this person's conversations may be used to improve the model."""
    return await state.feedback.consent(visitor.principal)


@router.put("/me/consent")
async def put_consent(body: Consent, visitor: WebUser, state: State) -> dict[str, Any]:
    """Choose (true or false), or follow the organisation's default again (null)."""
    return await state.feedback.set_consent(visitor.principal, body.use_for_training)


class ChatBody(Body):
    """A new message (``content``) under ``parent_id``, or with no content a new answer to the
    user message ``parent_id`` (a regeneration). See ``chat.Placement``."""

    conversation_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None
    content: str | None = Field(default=None, max_length=100_000)
    model: str | None = Field(default=None, max_length=200)


@router.post("/chat")
async def chat(http: Request, body: ChatBody, visitor: WebUser, state: State) -> Response:
    who = visitor.principal
    guard.refuse_banned(state, *guard.subjects(http, who))
    if state.plans.get(who.plan).browser_only and "sec-fetch-mode" not in http.headers:
        # Every current browser sends Sec-Fetch-* headers; a script with a stolen cookie
        # usually does not.
        refused = PermissionDenied(
            "This plan is for the web chat in a browser.", code="browser_only_plan"
        )
        refused.violation = "non_browser"
        guard.count(state, refused, *guard.subjects(http, who))
        raise refused
    content = body.content.strip() if body.content is not None else None
    if content == "":
        raise InvalidRequest("Write a message first.", param="content")
    if body.parent_id is not None and body.conversation_id is None:
        raise InvalidRequest("parent_id needs its conversation_id.", param="conversation_id")
    title = None
    path: list[Message] = []
    shown: Message | None = None
    instructions = None
    parent_id = body.parent_id
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        if body.conversation_id is None and content is not None:
            instructions = await instructions_of(session, who.user_id)
        if body.conversation_id is not None:
            title = (await _owned(conversations, visitor, body.conversation_id)).title
            if parent_id is None and content is not None:  # a new first message, edited
                parent_id = await conversations.opening_system(body.conversation_id)
        if parent_id is not None:
            parent = await conversations.message_of(who.user_id, parent_id)
            if parent is None or parent.conversation_id != body.conversation_id:
                raise _no_message()
            path = await conversations.path_to(parent.id)
            if content is None:  # a regeneration: which answer was the person looking at?
                shown = await conversations.shown_child(parent)
    if content is None and (not path or path[-1].role != "user"):
        raise InvalidRequest(
            "To regenerate, parent_id must be the question (a user message).", param="parent_id"
        )
    # A new chat begins with the person's custom instructions, stored as its system message.
    turns = (Turn("system", instructions),) if instructions else tuple(m.turn for m in path)
    if content is not None:
        turns += (Turn("user", content),)
    model = body.model or _default_model(state, who.plan)
    if model is None:
        raise NotFound("Your plan has no model available.", code="model_not_found")
    request = GenerationRequest(model=model, turns=turns, temperature=TEMPERATURE, top_p=TOP_P)
    pair = None
    if content is not None:
        pair = state.preferences.side_by_side(state.models_for(who.plan), model)
        if pair is not None:
            request = _variant(request, pair[0])
    placement = Placement(
        body.conversation_id,
        parent_id,
        new_turn=content is not None,
        earlier=1 if instructions else 0,  # the system message, stored before the question
    )
    try:
        exchange = await unless_disconnected(
            http, state.chat.open(who, request, placement=placement)
        )
    except APIError as error:
        guard.count(state, error, *guard.subjects(http, who))
        raise
    answer = _answer_json(exchange, parent_id)
    if pair is not None:
        answer["model"] = None  # anonymous until the vote
    system = _system_message(exchange, instructions)
    start = {
        "conversation_id": str(exchange.conversation_id),
        "title": title or title_from(turns),
        "system_message": system,
        "user_message": _question(exchange, system["id"] if system else parent_id, content),
        "message": answer,
        "side_by_side": pair is not None,
    }
    try:
        headers = {**exchange.headers, **await leak_warning(state, who, [t.content for t in turns])}
        if content is not None:
            await guard.watch_prompt(state, who, content)
        start["warning"] = headers.get("x-lamplighter-warning")
        if pair is None:
            ask = content is None and asks_verdict(
                exchange.message_id, state.preferences.policy.verdict_rate
            )
            if ask and shown is not None:
                ask = await state.preferences.expect_verdict(
                    who, shown, exchange.message_id, exchange.model
                )
            # Its own task: a page that reloads mid-answer finds it going on (Detached.leave).
            detached = state.chat.detach(exchange, read=True)
            events = _events(exchange, answer, ask_verdict=ask, chunks=detached.chunks())
            leave = detached.leave
        else:
            second = SecondAnswer(who, _variant(request, pair[1]), pair, visitor.origin)
            events = _pair(state, exchange, answer, second)
            leave = exchange.close  # a side-by-side is voted on live: its page's leaving cuts it
    except BaseException:
        await exchange.close()  # no response will: its slot and answer must not be left open
        raise
    return EventStreamResponse(_started(start, events), headers, finally_=leave)


def _variant(request: GenerationRequest, variant: Variant) -> GenerationRequest:
    temperature = TEMPERATURE if variant.temperature is None else variant.temperature
    return replace(request, model=variant.model, temperature=temperature)


async def _started(start: dict[str, Any], events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield event("start", start)
    try:
        async for frame in events:
            yield frame
    finally:
        await events.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SecondAnswer:
    """What the second side of a side-by-side needs: who asked, what to ask, and how."""

    who: Principal
    request: GenerationRequest
    variants: tuple[Variant, Variant]
    origin: str | None


async def _pair(
    state: Services, first: Exchange, answer: dict[str, Any], second: SecondAnswer
) -> AsyncIterator[bytes]:
    """Both answers of a side-by-side in one stream, their events tagged ``slot`` a or b.

    The second answer is opened beside the first (as soon as its backend has room: with one
    slot, after the first) under the same question; ``pair`` announces it with the comparison
    to vote on. If it cannot be had (a limit, an overload), ``pair_error`` says so and the first
    answer stands alone.
    """
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    opened: list[Exchange] = []

    async def first_answer() -> None:
        async for frame in _events(first, answer, slot="a"):
            await frames.put(frame)

    async def second_answer() -> None:
        placement = Placement(first.conversation_id, first.question_id, new_turn=False)
        try:
            exchange = await state.chat.open(second.who, second.request, placement=placement)
        except APIError as error:
            await frames.put(event("pair_error", {**error.body(), "slot": "b"}))
            return
        opened.append(exchange)
        assert first.conversation_id is not None and first.question_id is not None
        comparison = await state.preferences.open_pair(
            second.who,
            first.conversation_id,
            first.question_id,
            (first.message_id, exchange.message_id),
            second.variants,
            second.origin,
        )
        other = {**_answer_json(exchange, first.question_id), "model": None}
        await frames.put(
            event("pair", {"message": other, "comparison": comparison_json(comparison)})
        )
        async for frame in _events(exchange, other, slot="b"):
            await frames.put(frame)

    async def run(work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception:
            log.exception("side-by-side answer failed")
        finally:
            frames.put_nowait(None)

    tasks = [asyncio.create_task(run(first_answer)), asyncio.create_task(run(second_answer))]
    running = len(tasks)
    try:
        while running:
            frame = await frames.get()
            if frame is None:
                running -= 1
            else:
                yield frame
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for exchange in opened:
            await exchange.close()


async def instructions_of(session: AsyncSession, user_id: uuid.UUID) -> str | None:
    """The person's custom instructions (see ``User.custom_instructions``), or None."""
    found: str | None = await session.scalar(
        select(User.custom_instructions).where(User.id == user_id)
    )
    return found


def _system_message(exchange: Exchange, instructions: str | None) -> dict[str, Any] | None:
    """The system message a new chat's custom instructions were stored as, for the page."""
    if not instructions or not exchange.earlier_ids:
        return None
    return _stored(exchange.earlier_ids[0], None, "system", instructions)


def _question(
    exchange: Exchange, parent_id: uuid.UUID | str | None, content: str | None
) -> dict[str, Any] | None:
    if exchange.question_id is None or content is None:
        return None
    return _stored(exchange.question_id, parent_id, "user", content)


def _stored(
    message_id: uuid.UUID, parent_id: uuid.UUID | str | None, role: str, content: str
) -> dict[str, Any]:
    """A message the exchange stored as it opened (as ``message_json`` shows it)."""
    return {
        "id": str(message_id),
        "parent_id": str(parent_id) if parent_id else None,
        "role": role,
        "content": content,
        "html": None,
        "status": "complete",
        "finish_reason": None,
        "model": None,
        "author": None,
        "created_at": utcnow().isoformat(),
        "rating": None,
    }


def _answer_json(exchange: Exchange, parent_id: uuid.UUID | None) -> dict[str, Any]:
    parent = exchange.question_id or parent_id
    return {
        "id": str(exchange.message_id),
        "parent_id": str(parent) if parent else None,
        "role": "assistant",
        "content": exchange.content,
        "html": render(exchange.content),
        "status": "in_progress",
        "finish_reason": exchange.finish_reason,
        "model": exchange.model,
        "author": None,
        "created_at": utcnow().isoformat(),
        "rating": None,
    }


def event(name: str, payload: Any) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


async def _events(
    exchange: Exchange,
    answer: dict[str, Any],
    *,
    slot: str | None = None,
    ask_verdict: bool = False,
    chunks: AsyncIterator[Chunk] | None = None,
) -> AsyncIterator[bytes]:
    """delta after delta with the rendered answer (html) now and then, then done once the
    answer is durable — or error if the backend failed. ``slot`` tags every event with the side
    of a side-by-side it belongs to; ``ask_verdict`` asks the page to ask "better, worse or the
    same?" once a regeneration is done. ``chunks`` are the exchange's, read by another task
    (``ChatService.detach``); by default the stream is read here.

    Rendering costs time proportional to the answer's length (about 2 ms per KB, in the event
    loop), so a long answer is rendered less often: at most every HTML_INTERVAL_S, and never
    more than a tenth of the time. The page shows deltas as they come in either case.
    """
    tag = {} if slot is None else {"slot": slot}
    next_render = time.monotonic() + HTML_INTERVAL_S
    rendered = 0
    chunks = exchange.stream() if chunks is None else chunks
    try:
        async for chunk in chunks:
            if chunk.text:
                yield event("delta", {"text": chunk.text, **tag})
            now = time.monotonic()
            if now >= next_render and len(exchange.text) != rendered:
                rendered = len(exchange.text)
                html = render(exchange.content)
                cost = time.monotonic() - now
                next_render = now + max(HTML_INTERVAL_S, RENDER_SHARE * cost)
                yield event("html", {"html": html, **tag})
    except APIError as error:
        yield event("error", {**error.body(), **tag})
        return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    done = {
        **answer,
        "content": exchange.content,
        "html": render(exchange.content),
        "status": "cut"
        if exchange.interrupted or exchange.finish_reason == "cancelled"
        else "complete",
        "finish_reason": exchange.finish_reason,
    }
    yield event("done", {"message": done, "ask_verdict": ask_verdict, **tag})
