"""Queries on conversations and their message trees."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.conversation.threading import ROOT_HASH, Turn, node_hash
from lamplighter.store.models import Conversation, Message, Rating


class Node(NamedTuple):
    """A stored message, as much as threading a request needs of it."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    path_hash: str


class Conversations:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def nodes_by_path(self, user_id: uuid.UUID, hashes: Sequence[str]) -> dict[str, Node]:
        """The user's stored nodes whose path hash is among ``hashes``; the oldest wins when
        the same path was stored twice (two identical requests racing)."""
        if not hashes:
            return {}
        result = await self.session.execute(
            select(Message.id, Message.conversation_id, Message.path_hash)
            .where(Message.user_id == user_id, Message.path_hash.in_(set(hashes)))
            .order_by(Message.id.desc())
        )
        return {row.path_hash: Node(*row) for row in result}

    # The chat's hot path writes with plain INSERTs, not the ORM's unit of work: a tenth of the
    # CPU, and a whole new path goes in as one statement.
    async def insert_conversation(self, values: dict[str, Any]) -> None:
        await self.session.execute(insert(cast(Table, Conversation.__table__)), [values])

    async def insert_messages(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.session.execute(insert(cast(Table, Message.__table__)), list(rows))

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
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(current_leaf_id=leaf_id, updated_at=when)
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
    ) -> None:
        values: dict[str, object] = {
            "content": content,
            "status": status,
            "finish_reason": finish_reason,
            "updated_at": when,
        }
        if moderation is not None:
            values["moderation"] = moderation
        if path_hash is not None:
            values["path_hash"] = path_hash
        messages = cast(Table, Message.__table__)  # a plain UPDATE, for the chat's hot path
        await self.session.execute(
            update(messages).where(messages.c.id == message_id).values(values)
        )

    async def cut_unfinished(self, when: datetime) -> int:
        """Mark answers left in progress by a crashed process as cut, with the path hash of the
        text they kept, so a client can still continue from them; returns how many."""
        result = await self.session.execute(select(Message).where(Message.status == "in_progress"))
        unfinished = result.scalars().all()
        for message in unfinished:
            parent = (
                await self.session.get(Message, message.parent_id) if message.parent_id else None
            )
            message.status, message.finish_reason, message.updated_at = "cut", "interrupted", when
            message.path_hash = node_hash(
                parent.path_hash if parent else ROOT_HASH, Turn(message.role, message.content)
            )
        await self.session.flush()
        return len(unfinished)

    async def path_to(self, leaf_id: uuid.UUID) -> list[Message]:
        """The messages from the root down to ``leaf_id``."""
        path: list[Message] = []
        node = await self.session.get(Message, leaf_id)
        while node is not None:
            path.append(node)
            node = await self.session.get(Message, node.parent_id) if node.parent_id else None
        return path[::-1]

    async def shown_child(self, parent: Message) -> Message | None:
        """The child of ``parent`` on the branch the conversation shows (its current leaf's
        path), if that branch passes through ``parent``."""
        conversation = await self.session.get(Conversation, parent.conversation_id)
        if conversation is None or conversation.current_leaf_id is None:
            return None
        node = await self.session.get(Message, conversation.current_leaf_id)
        while node is not None and node.parent_id is not None:
            if node.parent_id == parent.id:
                return node
            node = await self.session.get(Message, node.parent_id)
        return None

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
        self, user_id: uuid.UUID, query: str = "", limit: int = 100
    ) -> Sequence[Conversation]:
        """The user's conversations, most recently active first; with ``query``, only those
        whose title or any message contains it (case-insensitively)."""
        statement = select(Conversation).where(Conversation.user_id == user_id)
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

    async def delete(self, conversation_id: uuid.UUID) -> None:
        """Delete a conversation and, through the foreign keys, its messages and ratings."""
        await self.session.execute(delete(Conversation).where(Conversation.id == conversation_id))
