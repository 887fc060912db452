"""Queries on conversations and their message trees."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from itertools import pairwise
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.conversation.threading import ROOT_HASH, node_hash
from lamplighter.store.models import Conversation, Message, Rating, utcnow


class Node(NamedTuple):
    """A stored message, as much as threading a request needs of it."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    path_hash: str


class Deleted(NamedTuple):
    """What deleting an answer took: its id and the ids of the answers below it, and the
    conversation when nothing was left of it."""

    answers: list[uuid.UUID]
    conversation: uuid.UUID | None


# The chat's hot path: statements built once, their values bound at execution (building a
# statement per request cost more CPU than running it), and plain INSERTs and UPDATEs rather
# than the ORM's unit of work, so that a whole new path goes in as one statement.
_MESSAGES = cast(Table, Message.__table__)
_CONVERSATIONS = cast(Table, Conversation.__table__)
_NODES = (
    select(Message.id, Message.conversation_id, Message.path_hash)
    .where(
        Message.user_id == bindparam("user"),
        Message.path_hash.in_(bindparam("hashes", expanding=True)),
    )
    .order_by(Message.id.desc())
)
_INSERT_MESSAGES = insert(_MESSAGES)
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_MOVE_LEAF = update(_CONVERSATIONS).where(_CONVERSATIONS.c.id == bindparam("conversation"))
_FINISH = update(_MESSAGES).where(_MESSAGES.c.id == bindparam("message"))


class Conversations:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def nodes_by_path(self, user_id: uuid.UUID, hashes: Sequence[str]) -> dict[str, Node]:
        """The user's stored nodes whose path hash is among ``hashes``; the oldest wins when
        the same path was stored twice (two identical requests racing)."""
        if not hashes:
            return {}
        result = await self.session.execute(_NODES, {"user": user_id, "hashes": list(set(hashes))})
        return {row.path_hash: Node(*row) for row in result}

    async def insert_conversation(self, values: dict[str, Any]) -> None:
        await self.session.execute(_INSERT_CONVERSATION, [values])

    async def insert_messages(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.session.execute(_INSERT_MESSAGES, list(rows))

    async def add_message(self, message: Message) -> Message:
        self.session.add(message)
        await self.session.flush()
        return message

    async def get(self, conversation_id: uuid.UUID) -> Conversation | None:
        return await self.session.get(Conversation, conversation_id)

    async def message_of(self, user_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        """A message, only if it belongs to ``user_id``."""
        result = await self.session.execute(
            select(Message).where(Message.id == message_id, Message.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def move_leaf(
        self, conversation_id: uuid.UUID, leaf_id: uuid.UUID, when: datetime
    ) -> None:
        await self.session.execute(
            _MOVE_LEAF,
            {"conversation": conversation_id, "current_leaf_id": leaf_id, "updated_at": when},
        )

    async def mark_background(self, message_id: uuid.UUID) -> None:
        """The answer is a background response's."""
        await self.session.execute(
            update(Message).where(Message.id == message_id).values(background=True)
        )

    async def finish_message(
        self,
        message_id: uuid.UUID,
        *,
        content: str,
        status: str,
        finish_reason: str | None,
        when: datetime,
        path_hash: str | None = None,
        moderation: dict[str, list[str]] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        values: dict[str, object] = {
            "content": content,
            "status": status,
            "finish_reason": finish_reason,
            "updated_at": when,
        }
        if moderation is not None:
            values["moderation"] = moderation
        if tool_calls is not None:
            values["tool_calls"] = tool_calls
        if path_hash is not None:
            values["path_hash"] = path_hash
        await self.session.execute(_FINISH, {"message": message_id, **values})

    async def cut_unfinished(
        self, when: datetime, only: Collection[uuid.UUID] | None = None
    ) -> int:
        """Mark answers left in progress by a crashed process (of those ``only``) as cut, with
        the path hash of the text they kept, so a client can still continue from them; returns
        how many."""
        unfinished_ones = select(Message).where(Message.status == "in_progress")
        if only is not None:
            unfinished_ones = unfinished_ones.where(Message.id.in_(only))
        result = await self.session.execute(unfinished_ones)
        unfinished = result.scalars().all()
        for message in unfinished:
            parent = (
                await self.session.get(Message, message.parent_id) if message.parent_id else None
            )
            message.status, message.finish_reason, message.updated_at = "cut", "interrupted", when
            message.path_hash = node_hash(parent.path_hash if parent else ROOT_HASH, message.turn)
        await self.session.flush()
        return len(unfinished)

    async def path_to(self, leaf_id: uuid.UUID) -> list[Message]:
        """The messages from the root down to ``leaf_id``: one recursive query, however long
        the conversation (a query a message, before, cost a 300-turn chat 300 round trips)."""
        up = select(Message.id, Message.parent_id).where(Message.id == leaf_id).cte(recursive=True)
        up = up.union_all(
            select(Message.id, Message.parent_id).join(up, Message.id == up.c.parent_id)
        )
        found = await self.session.scalars(
            select(Message).join(up, Message.id == up.c.id).order_by(Message.depth)
        )
        return list(found)

    async def opening_system(self, conversation_id: uuid.UUID) -> uuid.UUID | None:
        """The system message a conversation begins with (a web chat's custom instructions),
        if it has one: a new first message goes under it, as the first did."""
        found: uuid.UUID | None = await self.session.scalar(
            select(Message.id)
            .where(
                Message.conversation_id == conversation_id,
                Message.parent_id.is_(None),
                Message.role == "system",
            )
            .order_by(Message.id)
            .limit(1)
        )
        return found

    async def shown_child(self, parent: Message) -> Message | None:
        """The child of ``parent`` on the branch the conversation shows (its current leaf's
        path), if that branch passes through ``parent``."""
        conversation = await self.session.get(Conversation, parent.conversation_id)
        if conversation is None or conversation.current_leaf_id is None:
            return None
        path = await self.path_to(conversation.current_leaf_id)
        return next((below for above, below in pairwise(path) if above.id == parent.id), None)

    async def children_of(self, parent_id: uuid.UUID) -> Sequence[Message]:
        result = await self.session.execute(
            select(Message).where(Message.parent_id == parent_id).order_by(Message.id)
        )
        return result.scalars().all()

    async def owned(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation | None:
        """A conversation, only if it belongs to ``user_id``."""
        result = await self.session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.user_id == user_id
            )
        )
        return result.scalar_one_or_none()

    async def list_for(
        self,
        user_id: uuid.UUID,
        query: str = "",
        limit: int = 100,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> Sequence[Conversation]:
        """The user's conversations, most recently active first (then by id, so that the order
        is total); with ``query``, only those whose title or any message contains it
        (case-insensitively); with ``after``, an ``(updated_at, id)``, only those strictly
        after it in that order. Paging on from a page's last conversation so repeats none and
        skips none that stayed below it, whatever moved to the top or went meanwhile."""
        statement = select(Conversation).where(Conversation.user_id == user_id)
        if after is not None:
            at, last = after
            statement = statement.where(
                or_(
                    Conversation.updated_at < at,
                    and_(Conversation.updated_at == at, Conversation.id < last),
                )
            )
        if query:
            needle = query.lower()
            in_messages = exists().where(
                Message.conversation_id == Conversation.id,
                func.lower(Message.content).contains(needle, autoescape=True),
            )
            statement = statement.where(
                or_(func.lower(Conversation.title).contains(needle, autoescape=True), in_messages)
            )
        result = await self.session.execute(
            statement.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
        )
        return result.scalars().all()

    async def tree(self, conversation_id: uuid.UUID) -> list[tuple[Message, Rating | None]]:
        """Every node of a conversation, oldest first, each with its rating if it has one."""
        result = await self.session.execute(
            select(Message, Rating)
            .outerjoin(Rating, Rating.message_id == Message.id)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.id)
        )
        return [(message, rating) for message, rating in result]

    async def delete_answer(self, answer: Message) -> Deleted:
        """Delete an answer with everything that continues from it (each later turn had it in
        its context), and the messages that led only to it, up to the answer before or a message
        with other branches; the conversation too once nothing is left of it. A conversation
        that showed a deleted branch shows the nearest one left. Their ratings and comparisons
        go with them, through the foreign keys."""
        conversation_id = answer.conversation_id
        below = select(Message.id, Message.role).where(Message.id == answer.id).cte(recursive=True)
        below = below.union_all(
            select(Message.id, Message.role).where(Message.parent_id == below.c.id)
        )
        rows = (await self.session.execute(select(below.c.id, below.c.role))).all()
        gone = {row.id for row in rows}
        top, above = answer, await self._parent(answer)
        while above is not None and above.role != "assistant":
            siblings = await self.session.scalar(
                select(func.count()).where(Message.parent_id == above.id, Message.id != top.id)
            )
            if siblings:
                break
            top, above = above, await self._parent(above)
            gone.add(top.id)
        await self.session.execute(delete(Message).where(Message.id == top.id))  # and below it
        answers = [row.id for row in rows if row.role == "assistant"]
        conversation = await self.session.get(Conversation, conversation_id)
        root = await self._latest_child(None, conversation_id)
        if root is None:
            await self.delete(conversation_id)
            return Deleted(answers, conversation_id)
        if conversation is not None:
            if conversation.current_leaf_id in gone:
                conversation.current_leaf_id = await self._leaf_below(above.id if above else root)
            # Changed as by a message written: incremental exports read it again (an answer
            # left for the deleted one is a demonstration again, the branch shown moved).
            conversation.updated_at = utcnow()
        return Deleted(answers, None)

    async def _parent(self, message: Message) -> Message | None:
        return await self.session.get(Message, message.parent_id) if message.parent_id else None

    async def _latest_child(
        self, parent_id: uuid.UUID | None, conversation_id: uuid.UUID
    ) -> uuid.UUID | None:
        """The newest child of ``parent_id`` (None: of the conversation's root)."""
        parent = (
            Message.parent_id.is_(None) if parent_id is None else Message.parent_id == parent_id
        )
        return await self.session.scalar(
            select(Message.id)
            .where(Message.conversation_id == conversation_id, parent)
            .order_by(Message.id.desc())
            .limit(1)
        )

    async def _leaf_below(self, message_id: uuid.UUID) -> uuid.UUID:
        """The leaf reached from ``message_id`` by always taking the newest branch."""
        conversation_id = await self.session.scalar(
            select(Message.conversation_id).where(Message.id == message_id)
        )
        assert conversation_id is not None
        while (child := await self._latest_child(message_id, conversation_id)) is not None:
            message_id = child
        return message_id

    async def delete(self, conversation_id: uuid.UUID) -> None:
        """Delete a conversation and, through the foreign keys, its messages and ratings."""
        await self.session.execute(delete(Conversation).where(Conversation.id == conversation_id))
