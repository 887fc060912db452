"""Stored completions through the real ``openai`` SDK: ``client.chat.completions.retrieve`` and
``.delete``, ``client.responses.delete``; what a deletion takes with it, and the deletion log
that incremental exports carry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from lamplighter.chat import message_id_from
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.flywheel.export import Exporter
from lamplighter.settings import Settings
from lamplighter.store.models import Conversation, Deletion, Message, User
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings


def ask(client: openai.OpenAI, *turns: str) -> str:
    """A chat completion of alternating user and assistant turns; its id."""
    roles = ("user", "assistant")
    messages: Any = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return client.chat.completions.create(model=SCRIPTED, messages=messages).id


def stored(server: LiveServer, email: str) -> list[tuple[str, str]]:
    """Every message the user has stored, as (role, content), oldest first."""

    async def load(services: Any) -> list[tuple[str, str]]:
        async with services.db.transaction() as session:
            rows = await session.execute(
                select(Message.role, Message.content)
                .join(User, User.id == Message.user_id)
                .where(User.email == email)
                .order_by(Message.id)
            )
            return [(role, content) for role, content in rows]

    return server.call(load)


def shown(server: LiveServer, email: str) -> list[str | None]:
    """The content of each of the user's conversations' current leaf."""

    async def load(services: Any) -> list[str | None]:
        async with services.db.transaction() as session:
            rows = await session.execute(
                select(Message.content)
                .select_from(Conversation)
                .join(User, User.id == Conversation.user_id)
                .outerjoin(Message, Message.id == Conversation.current_leaf_id)
                .where(User.email == email)
            )
            return [content for (content,) in rows]

    return server.call(load)


def conversation_of(server: LiveServer, name: str) -> uuid.UUID:
    async def load(services: Any) -> uuid.UUID:
        async with services.db.transaction() as session:
            message = await session.get(Message, message_id_from(name))
            return message.conversation_id

    return server.call(load)


def deletions(server: LiveServer, *ids: uuid.UUID | None) -> list[str]:
    """The kinds of the deletions logged for these message or conversation ids."""

    async def load(services: Any) -> list[str]:
        async with services.db.transaction() as session:
            rows = await session.execute(select(Deletion.kind).where(Deletion.subject_id.in_(ids)))
            return sorted(kind for (kind,) in rows)

    return server.call(load)


def test_a_stored_completion_is_retrieved_by_its_owner_only(server: LiveServer) -> None:
    _, key = server.new_user(plan="roomy")
    _, other = server.new_user(plan="roomy")
    answer = server.client(key).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "Keep this"}]
    )
    again = server.client(key).chat.completions.retrieve(answer.id)
    assert again.model_dump(exclude={"created"}) == answer.model_dump(exclude={"created"})
    assert again.choices[0].message.content == "You said: Keep this"
    for client, name in ((server.client(other), answer.id), (server.client(key), "chatcmpl-x")):
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.retrieve(name)
        assert missing.value.code == "not_found"


def test_deleting_an_answer_takes_what_continues_from_it_and_what_led_only_to_it(
    server: LiveServer, tmp_path: Path
) -> None:
    started = datetime.now(UTC)
    email, key = server.new_user(plan="roomy")
    client = server.client(key)
    first = ask(client, "one")
    second = ask(client, "one", "You said: one", "two")  # stored under the first answer
    sibling = ask(client, "one", "You said: one", "two")  # a regeneration: the same question

    deleted = client.chat.completions.delete(sibling)
    assert (deleted.id, deleted.deleted, deleted.object) == (
        sibling,
        True,
        "chat.completion.deleted",
    )
    # The question had another answer: it stays, and the conversation shows that answer.
    assert stored(server, email) == [
        ("user", "one"),
        ("assistant", "You said: one"),
        ("user", "two"),
        ("assistant", "You said: two"),
    ]
    assert shown(server, email) == ["You said: two"]

    client.chat.completions.delete(second)  # its question led only to it: it goes too
    assert stored(server, email) == [("user", "one"), ("assistant", "You said: one")]
    assert shown(server, email) == ["You said: one"]
    assert client.chat.completions.retrieve(first).choices[0].message.content == "You said: one"

    third = ask(client, "one", "You said: one", "three")
    conversation = conversation_of(server, first)
    client.chat.completions.delete(first)  # everything continues from it: nothing is left
    assert stored(server, email) == [] and shown(server, email) == []
    for gone in (first, third):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(gone)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(first)
    # Logged by id for incremental exports: each answer, and the conversation that went.
    answers = [message_id_from(name) for name in (first, sibling, second, third)]
    assert deletions(server, *answers) == ["message"] * 4
    assert deletions(server, conversation) == ["conversation"]
    # An incremental export tells copies made earlier which rows to drop.
    out = tmp_path / "sft"
    server.call(lambda s: Exporter(s.db, consent_default=True).run("sft", out, since=started))
    lines = [json.loads(line) for line in (out / "deletions.jsonl").read_text().splitlines()]
    named = {line.get("message_id") for line in lines} | {
        line.get("conversation_id") for line in lines
    }
    assert {str(answer) for answer in answers} | {str(conversation)} <= named


def test_a_response_is_deleted_by_its_owner_and_cannot_be_continued(server: LiveServer) -> None:
    email, key = server.new_user(plan="roomy")
    _, other = server.new_user(plan="roomy")
    client = server.client(key)
    first = client.responses.create(model=SCRIPTED, input="alpha")
    second = client.responses.create(model=SCRIPTED, input="beta", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        server.client(other).responses.delete(second.id)

    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError) as refused:
        client.responses.create(model=SCRIPTED, input="gamma", previous_response_id=second.id)
    assert refused.value.code == "previous_response_not_found"
    assert client.responses.retrieve(first.id).output_text == "You said: alpha"
    assert stored(server, email) == [("user", "alpha"), ("assistant", "You said: alpha")]


def test_stored_completions_are_listed_page_by_page_with_the_messages_they_answered(
    server: LiveServer,
) -> None:
    _, key = server.new_user(plan="roomy")
    client = server.client(key)
    first = ask(client, "one")
    second = ask(client, "one", "You said: one", "two")  # the client's copy of an answer is
    third = ask(client, "three", "A made-up answer", "four")  # not listed, nor one it made up
    everything = list(client.chat.completions.list(limit=2))  # three pages, read as one
    assert [c.id for c in everything] == [first, second, third]
    assert [c.choices[0].message.content for c in everything][-1] == "You said: four"
    newest = client.chat.completions.list(order="desc", limit=2)
    assert [c.id for c in newest.data] == [third, second] and newest.has_more
    assert [c.id for c in client.chat.completions.list(after=first)] == [second, third]
    assert list(client.chat.completions.list(model="no-such-model")) == []
    assert len(list(client.chat.completions.list(model=SCRIPTED))) == 3

    messages = list(client.chat.completions.messages.list(third, limit=2))
    assert [(m.role, m.content) for m in messages] == [
        ("user", "three"),
        ("assistant", "A made-up answer"),
        ("user", "four"),
    ]
    assert [m.id for m in messages] == [f"{third}-0", f"{third}-1", f"{third}-2"]
    backwards = client.chat.completions.messages.list(third, order="desc")
    assert [m.content for m in backwards.data] == ["four", "A made-up answer", "three"]
    _, other = server.new_user(plan="roomy")
    with pytest.raises(openai.NotFoundError):
        server.client(other).chat.completions.messages.list(third)
    assert list(server.client(other).chat.completions.list()) == []


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_of(
    request: pytest.FixtureRequest, server: LiveServer, tmp_path: Path
) -> Iterator[LiveServer]:
    """The session's server (SQLite), or one on PostgreSQL: the metadata filter is a JSON
    query that each database spells its own way."""
    if request.param == "sqlite":
        yield server
        return
    url = request.getfixturevalue("postgres_url")

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    (tmp_path / "c.toml").write_text(ROOMY_PLAN)
    settings = make_settings(tmp_path, config=tmp_path / "c.toml", database_url=url)
    with LiveServer(settings, backends) as live:
        yield live
        live.close_clients()


def test_metadata_is_stored_selects_completions_and_can_be_changed(store_of: LiveServer) -> None:
    server = store_of
    _, key = server.new_user(plan="roomy")
    client = server.client(key)
    hello = [{"role": "user", "content": "tagged"}]
    a = client.chat.completions.create(
        model=SCRIPTED, messages=hello, metadata={"team": "a", "run": "1"}
    )
    b = client.chat.completions.create(model=SCRIPTED, messages=hello, metadata={"team": "b"})
    plain = client.chat.completions.create(model=SCRIPTED, messages=hello)
    assert a.metadata == {"team": "a", "run": "1"} and plain.metadata is None
    assert client.chat.completions.retrieve(a.id).metadata == {"team": "a", "run": "1"}
    assert [c.id for c in client.chat.completions.list(metadata={"team": "a"})] == [a.id]
    both = client.chat.completions.list(metadata={"team": "a", "run": "1"})
    assert [c.id for c in both] == [a.id]
    assert list(client.chat.completions.list(metadata={"team": "a", "run": "2"})) == []
    assert [c.id for c in client.chat.completions.list()] == [a.id, b.id, plain.id]

    changed = client.chat.completions.update(b.id, metadata={"team": "a", "fixed": "yes"})
    assert changed.id == b.id and changed.metadata == {"team": "a", "fixed": "yes"}
    assert [c.id for c in client.chat.completions.list(metadata={"team": "a"})] == [a.id, b.id]
    client.chat.completions.update(a.id, metadata=None)
    assert client.chat.completions.retrieve(a.id).metadata is None
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.update(a.id, metadata={"k": "v" * 513})
    assert refused.value.param == "metadata.k"
    stranger = server.client(server.new_user(plan="roomy")[1])
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.update(a.id, metadata={"mine": "now"})
    assert client.chat.completions.retrieve(a.id).metadata is None
