"""What an API caller stored: ``GET /v1/chat/completions`` (the list), ``GET`` and ``DELETE
/v1/chat/completions/{id}``, ``GET /v1/chat/completions/{id}/messages``, and the lookups and
deletion that ``/v1/responses/{id}`` shares with them.

Every stored answer is both a chat completion (``chatcmpl-<hex>``) and a response
(``resp_<hex>``): two names of one message in its owner's conversation tree. Deleting it deletes
what continues from it and the messages that led only to it (see
:meth:`Conversations.delete_answer`), and logs the deletion by id, so that incremental exports
carry it to training copies made earlier.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.api.openai import Caller, completion_body
from lamplighter.api.schemas import NUL_IN_METADATA, CompletionUpdate
from lamplighter.api.state import Services, State
from lamplighter.chat import Principal, TokenCount, completion_id, message_id_from
from lamplighter.exceptions import APIError, InvalidRequest, NotFound
from lamplighter.store.conversations import Conversations
from lamplighter.store.models import Deletion, Message, Usage, utcnow

router = APIRouter(prefix="/v1")

# How long stopping an answer waits for it to be settled before going on as it stands.
STOP_WAIT_S = 5.0
STOP_POLL_S = 0.05


async def stored_answer(conversations: Conversations, who: Principal, name: str) -> Message | None:
    """The caller's stored answer a completion or response id names, if any."""
    message_id = message_id_from(name)
    if message_id is None:
        return None
    answer = await conversations.message_of(who.user_id, message_id)
    return answer if answer is not None and answer.role == "assistant" else None


async def stored_usage(session: AsyncSession, answer: Message) -> TokenCount:
    """The tokens the ledger charged for an answer (none for one written by the client)."""
    ledger = await session.scalar(select(Usage).where(Usage.message_id == answer.id))
    return (
        TokenCount(ledger.prompt_tokens, ledger.completion_tokens) if ledger else TokenCount(0, 0)
    )


async def stop_answer(state: Services, answer: Message) -> Literal["here", "elsewhere"] | None:
    """Stop the generation of ``answer`` if it is still being written: here, waiting (a
    little) until it is settled as cut, with what was generated and charged; on another
    replica, told through the bulletin. Where it was stopped (None: nowhere)."""
    task = state.chat.cancel(answer.id)
    if task is not None:
        await asyncio.wait({task}, timeout=STOP_WAIT_S)
        return "here"
    if answer.status == "in_progress" and state.bulletin is not None:
        await state.bulletin.publish("response.cancel", id=answer.id.hex)
        return "elsewhere"
    return None


async def stop_generation(state: Services, who: Principal, name: str, answer: Message) -> None:
    """``stop_answer`` (``name`` names it), then, for one another replica stops, wait (a
    little) for that replica to settle it."""
    if await stop_answer(state, answer) == "elsewhere":
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            async with state.db.transaction() as session:
                found = await stored_answer(Conversations(session), who, name)
            if found is None or found.status != "in_progress":
                return
            await asyncio.sleep(STOP_POLL_S)


async def delete_stored(state: Services, who: Principal, name: str, missing: APIError) -> None:
    """Delete the caller's answer ``name`` names (else raise ``missing``). One still being
    generated (a background response) is stopped first, as a cancel stops it: deleted, it
    would otherwise run on to its token limit, holding its backend and charged."""
    async with state.db.transaction() as session:
        answer = await stored_answer(Conversations(session), who, name)
    if answer is None:
        raise missing
    if answer.status == "in_progress":
        await stop_generation(state, who, name, answer)
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        answer = await stored_answer(conversations, who, name)
        if answer is None:
            raise missing
        deleted = await conversations.delete_answer(answer)
        now = utcnow()
        session.add_all(
            Deletion(at=now, kind="message", subject_id=answer_id) for answer_id in deleted.answers
        )
        if deleted.conversation is not None:
            session.add(Deletion(at=now, kind="conversation", subject_id=deleted.conversation))


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page, as the SDK's auto-pagination reads it (``after`` is the last id)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]


@router.get("/chat/completions")
async def list_completions(
    request: Request,
    who: Caller,
    state: State,
    model: str | None = None,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> dict[str, Any]:
    """The caller's stored answers, oldest first (``order=desc``: newest first), ``limit`` at a
    time after the one ``after`` names; ``model`` keeps one model's. Every answer the service
    generated for the caller counts, the web chat's too: they are one store."""
    query = (
        select(Message, Usage.prompt_tokens, Usage.completion_tokens)
        .outerjoin(Usage, Usage.message_id == Message.id)
        .where(
            Message.user_id == who.user_id,
            Message.role == "assistant",
            Message.model.is_not(None),  # not the turns clients wrote into their messages
        )
        .order_by(Message.id.desc() if order == "desc" else Message.id)
        .limit(limit + 1)
    )
    if model is not None:
        query = query.where(Message.model == model)
    for key, value in _metadata_filter(request).items():
        query = query.where(Message.request_metadata[key].as_string() == value)
    if after is not None:
        cursor = message_id_from(after)
        if cursor is None:
            raise InvalidRequest(f"'{after}' is not a chat completion id.", param="after")
        query = query.where(Message.id < cursor if order == "desc" else Message.id > cursor)
    async with state.db.transaction() as session:
        rows = (await session.execute(query)).all()
    found = [
        _stored_completion(answer, TokenCount(prompt or 0, completion or 0))
        for answer, prompt, completion in rows[:limit]
    ]
    return _page(found, has_more=len(rows) > limit)


@router.get("/chat/completions/{name}/messages")
async def completion_messages(
    name: str,
    who: Caller,
    state: State,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> dict[str, Any]:
    """The messages a stored chat completion answered: its conversation from the start up to
    the answer (the system message included), ``<id>-<n>`` each, ``n`` counting from 0."""
    _, path = await answered(state, who, name, _not_found(name))
    messages = [_stored_message(f"{name}-{n}", m) for n, m in enumerate(path)]
    return page_of(messages, after, limit, order, name)


async def answered(
    state: Services, who: Principal, name: str, missing: APIError
) -> tuple[Message, list[Message]]:
    """The caller's stored answer ``name`` and the messages it answered, from the start of its
    conversation (else raise ``missing``)."""
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        answer = await stored_answer(conversations, who, name)
        if answer is None:
            raise missing
        return answer, (await conversations.path_to(answer.id))[:-1]


def page_of(
    items: list[dict[str, Any]], after: str | None, limit: int, order: str, of: str
) -> dict[str, Any]:
    """A page of ``items`` (in their order, or reversed for ``desc``), after the one with the id
    ``after``."""
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"'{after}' is not an item of {of}.", param="after")
        items = items[ids.index(after) + 1 :]
    return _page(items[:limit], has_more=len(items) > limit)


def _stored_message(name: str, message: Message) -> dict[str, Any]:
    """A message a stored completion answered, with its tool calls or the call it answers."""
    found: dict[str, Any] = {
        "id": name,
        "role": message.role,
        "content": message.content,
        "content_parts": None,
    }
    if message.tool_calls:
        found |= {"content": message.content or None, "tool_calls": message.tool_calls}
    if message.tool_call_id is not None:
        found["tool_call_id"] = message.tool_call_id
    return found


def _metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query parameters (as the SDK sends ``metadata={...}``): the
    completions whose metadata has every one of these pairs. A NUL is refused, as in stored
    metadata (``schemas.NUL_IN_METADATA``): PostgreSQL cannot compare text holding one."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith("metadata"):
            continue
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest(
                f"Invalid metadata filter: {NUL_IN_METADATA}, so no stored completion matches one.",
                param="metadata",
            )
        key = name.removeprefix("metadata")
        if not (key.startswith("[") and key.endswith("]") and 1 < len(key) <= 66):
            raise InvalidRequest(
                f"Invalid query parameter '{name}': filter by metadata as metadata[key]=value.",
                param="metadata",
            )
        found[key[1:-1]] = value
    return found


def _stored_completion(answer: Message, usage: TokenCount) -> dict[str, Any]:
    """A stored answer as a ``chat.completion``, as it stands: one still being generated has
    the text so far and no ``finish_reason``; one cut short (its client left, a failure, a
    stopping server) reads ``length``, as a cut does when it is answered."""
    finish = answer.finish_reason if answer.status == "complete" else "length"
    return completion_body(
        completion_id(answer.id),
        int(answer.created_at.timestamp()),
        answer.model or "",
        answer.content,
        None if answer.status == "in_progress" else finish,
        usage,
        answer.request_metadata,
        answer.tool_calls,
    )


def _not_found(name: str) -> NotFound:
    return NotFound(
        f"No chat completion found with id '{name}'.", param="completion_id", code="not_found"
    )


@router.get("/chat/completions/{name}")
async def retrieve_completion(name: str, who: Caller, state: State) -> dict[str, Any]:
    """A stored chat completion as it stands (see ``_stored_completion``)."""
    async with state.db.transaction() as session:
        answer = await stored_answer(Conversations(session), who, name)
        if answer is None:
            raise _not_found(name)
        usage = await stored_usage(session, answer)
    return _stored_completion(answer, usage)


@router.post("/chat/completions/{name}")
async def update_completion(
    name: str, body: CompletionUpdate, who: Caller, state: State
) -> dict[str, Any]:
    """Replace a stored chat completion's metadata (the only thing that may change; null
    clears it), as ``client.chat.completions.update(id, metadata=...)`` does."""
    async with state.db.transaction() as session:
        answer = await stored_answer(Conversations(session), who, name)
        if answer is None:
            raise _not_found(name)
        answer.request_metadata = body.metadata or None
        usage = await stored_usage(session, answer)
    return _stored_completion(answer, usage)


@router.delete("/chat/completions/{name}")
async def delete_completion(name: str, who: Caller, state: State) -> dict[str, Any]:
    """Delete a stored chat completion (see the module's docstring for what goes with it)."""
    await delete_stored(state, who, name, _not_found(name))
    return {"id": name, "object": "chat.completion.deleted", "deleted": True}
