"""How requests thread into the conversation tree: pure rules (property tests) and the stored
result over the API."""

from __future__ import annotations

import hashlib
import uuid

import openai
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from lamplighter.chat import message_id_from
from lamplighter.conversation.threading import (
    Turn,
    node_hash,
    path_hashes,
    stored_prefix,
    title_from,
)
from lamplighter.store.conversations import Conversations
from lamplighter.store.models import Conversation, Message
from tests.conftest import SCRIPTED, LiveServer

turns = st.lists(
    st.builds(Turn, st.sampled_from(["system", "user", "assistant"]), st.text(max_size=20)),
    min_size=1,
    max_size=8,
)


@given(turns, turns)
def test_extending_a_stored_path_reuses_all_of_it(stored: list[Turn], more: list[Turn]) -> None:
    known = set(path_hashes(stored))
    assert stored_prefix(path_hashes(stored + more), known) >= len(stored)


@given(turns, st.integers(min_value=0, max_value=7), st.text(min_size=1, max_size=5))
def test_an_edit_branches_exactly_where_the_paths_differ(
    stored: list[Turn], at: int, extra: str
) -> None:
    at = at % len(stored)
    edited = list(stored)
    edited[at] = Turn(stored[at].role, stored[at].content + extra)
    assert stored_prefix(path_hashes(edited), set(path_hashes(stored))) == at


@given(turns, turns)
def test_equal_hashes_mean_equal_paths(a: list[Turn], b: list[Turn]) -> None:
    assert (path_hashes(a)[-1] == path_hashes(b)[-1]) == (a == b)


@given(st.lists(st.text(max_size=5), min_size=1, max_size=3), turns)
def test_a_shared_system_prompt_alone_never_joins_two_chats(
    system: list[str], rest: list[Turn]
) -> None:
    prompt = [Turn("system", text) for text in system]
    request = [*prompt, Turn("user", "a new question"), *rest]
    assert stored_prefix(path_hashes(request), set(path_hashes(prompt)), request) == 0


@given(turns)
def test_nothing_stored_means_nothing_reused(request_turns: list[Turn]) -> None:
    assert stored_prefix(path_hashes(request_turns), set()) == 0


def test_title_is_the_first_user_message_on_one_line() -> None:
    assert title_from([Turn("system", "be nice"), Turn("user", "  Why is\nthe sky blue? ")]) == (
        "Why is the sky blue?"
    )
    assert len(title_from([Turn("user", "word " * 100)])) == 80
    assert title_from([Turn("system", "x")]) == "New conversation"


def _tree(server: LiveServer, answer_id: str) -> tuple[Conversation, list[Message]]:
    message_id = message_id_from(answer_id)
    assert message_id is not None

    async def load(services):  # type: ignore[no-untyped-def]
        async with services.db.transaction() as session:
            answer = await session.get(Message, message_id)
            conversation = await session.get(Conversation, answer.conversation_id)
            result = await session.execute(
                select(Message)
                .where(Message.conversation_id == conversation.id)
                .order_by(Message.id)
            )
            return conversation, list(result.scalars())

    result: tuple[Conversation, list[Message]] = server.call(load)
    return result


def ask(client: openai.OpenAI, messages: list[dict[str, str]]) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=SCRIPTED, messages=messages)  # type: ignore[arg-type]


def test_api_conversations_thread_into_one_tree(server: LiveServer, client: openai.OpenAI) -> None:
    marker = uuid.uuid4().hex
    first = [{"role": "user", "content": f"hello {marker}"}]
    a1 = ask(client, first)
    reply = a1.choices[0].message.content or ""
    # Continuing: the client sends the history back with a new question.
    follow = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
    a2 = ask(client, follow)
    # Regenerating: the same history again.
    a3 = ask(client, follow)
    # Editing the first question: a new branch at the root.
    a4 = ask(client, [{"role": "user", "content": f"hello {marker}, edited"}])

    conversation, messages = _tree(server, a2.id)
    by_id = {m.id: m for m in messages}
    ids = {name: message_id_from(a.id) for name, a in {"a1": a1, "a2": a2, "a3": a3}.items()}
    assert all(i in by_id for i in ids.values())
    # One conversation holds the first exchange and its continuation: q1 -> a1 -> q2 -> {a2, a3}.
    q1 = by_id[by_id[ids["a1"]].parent_id]  # type: ignore[index]
    q2 = by_id[by_id[ids["a2"]].parent_id]  # type: ignore[index]
    assert q1.parent_id is None and q1.content == f"hello {marker}"
    assert q2.parent_id == ids["a1"] and q2.content == "more"
    assert by_id[ids["a3"]].parent_id == q2.id  # the regeneration is a sibling
    assert len([m for m in messages if m.role == "user"]) == 2  # nothing was copied
    assert conversation.current_leaf_id == ids["a3"]  # the newest branch is the one shown
    assert conversation.title == f"hello {marker}"
    # The edited first question starts a conversation of its own (it shares no stored path).
    other, _ = _tree(server, a4.id)
    assert other.id != conversation.id


def test_store_false_stores_nothing_but_still_answers(
    server: LiveServer, client: openai.OpenAI
) -> None:
    answer = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "secret"}], store=False
    )
    assert answer.choices[0].message.content == "You said: secret"
    message_id = message_id_from(answer.id)

    async def load(services):  # type: ignore[no-untyped-def]
        async with services.db.transaction() as session:
            return await session.get(Message, message_id)

    assert server.call(load) is None


def test_chats_sharing_only_a_system_prompt_are_separate_conversations(
    server: LiveServer, client: openai.OpenAI
) -> None:
    system = {"role": "system", "content": f"You are terse. {uuid.uuid4().hex}"}
    a = ask(client, [system, {"role": "user", "content": "first chat"}])
    b = ask(client, [system, {"role": "user", "content": "second chat"}])
    assert _tree(server, a.id)[0].id != _tree(server, b.id)[0].id


def test_other_users_paths_are_never_reused(server: LiveServer) -> None:
    same = [{"role": "user", "content": f"shared words {uuid.uuid4().hex}"}]
    a = ask(server.client(server.new_user()[1]), same)
    b = ask(server.client(server.new_user()[1]), same)
    assert _tree(server, a.id)[0].id != _tree(server, b.id)[0].id


async def test_nodes_by_path_prefers_the_oldest_duplicate(database_url: str) -> None:
    from lamplighter.accounts import AccountService
    from lamplighter.store.database import Database
    from lamplighter.store.models import new_id

    db = Database(database_url)
    try:
        user = await AccountService(db).create_user(f"{uuid.uuid4().hex}@example.org")
        async with db.transaction() as session:
            repo = Conversations(session)
            conversation = Conversation(user_id=user.id)
            session.add(conversation)
            await session.flush()
            ids = [new_id(), new_id()]
            for message_id in ids:
                await repo.add_message(
                    Message(
                        id=message_id,
                        conversation_id=conversation.id,
                        user_id=user.id,
                        role="user",
                        content="x",
                        path_hash="h",
                        depth=0,
                    )
                )
            found = await repo.nodes_by_path(user.id, ["h", "missing"])
        assert list(found) == ["h"] and found["h"].id == ids[0]
    finally:
        await db.close()


def test_tool_calls_and_call_ids_are_part_of_a_turn() -> None:
    """An answer that called a tool, one that called another, and one that said nothing are
    three different turns; a turn without tool use hashes as it always did."""
    silent = Turn("assistant", "")
    weather = Turn("assistant", "", tool_calls='[{"id":"c1"}]')
    other = Turn("assistant", "", tool_calls='[{"id":"c2"}]')
    result = Turn("tool", "42", tool_call_id="c1")
    hashes = {node_hash("", turn) for turn in (silent, weather, other, result, Turn("tool", "42"))}
    assert len(hashes) == 5
    # The encoding of a turn without tool use is unchanged: (parent, role, content).
    digest = hashlib.sha256()
    for part in ("", "user", "hi"):
        digest.update(len(part.encode()).to_bytes(8, "big") + part.encode())
    assert node_hash("", Turn("user", "hi")) == digest.hexdigest()
