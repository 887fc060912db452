"""What an API caller stored: ``GET`` and ``DELETE /v1/chat/completions/{id}``, and the lookups
and deletion that ``/v1/responses/{id}`` shares with them.

Every stored answer is both a chat completion (``chatcmpl-<hex>``) and a response
(``resp_<hex>``): two names of one message in its owner's conversation tree. Deleting it deletes
what continues from it and the messages that led only to it (see
:meth:`Conversations.delete_answer`), and logs the deletion by id, so that incremental exports
carry it to training copies made earlier.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.api.openai import Caller, completion_body
from lamplighter.api.state import Services, State
from lamplighter.chat import Principal, TokenCount, completion_id, message_id_from
from lamplighter.exceptions import APIError, NotFound
from lamplighter.store.conversations import Conversations
from lamplighter.store.models import Deletion, Message, Usage, utcnow

router = APIRouter(prefix="/v1")


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


async def delete_stored(state: Services, who: Principal, name: str, missing: APIError) -> None:
    """Delete the caller's answer ``name`` names (else raise ``missing``)."""
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


def _not_found(name: str) -> NotFound:
    return NotFound(
        f"No chat completion found with id '{name}'.", param="completion_id", code="not_found"
    )


@router.get("/chat/completions/{name}")
async def retrieve_completion(name: str, who: Caller, state: State) -> dict[str, Any]:
    """A stored chat completion as it stands: one still being generated has the text so far
    and no ``finish_reason``; one cut short (its client left, a failure, a stopping server)
    reads ``length``, as a cut does when it is answered."""
    async with state.db.transaction() as session:
        answer = await stored_answer(Conversations(session), who, name)
        if answer is None:
            raise _not_found(name)
        usage = await stored_usage(session, answer)
    finish = answer.finish_reason if answer.status == "complete" else "length"
    return completion_body(
        completion_id(answer.id),
        int(answer.created_at.timestamp()),
        answer.model or "",
        answer.content,
        None if answer.status == "in_progress" else finish,
        usage,
    )


@router.delete("/chat/completions/{name}")
async def delete_completion(name: str, who: Caller, state: State) -> dict[str, Any]:
    """Delete a stored chat completion (see the module's docstring for what goes with it)."""
    await delete_stored(state, who, name, _not_found(name))
    return {"id": name, "object": "chat.completion.deleted", "deleted": True}
