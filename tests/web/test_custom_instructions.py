"""Custom instructions: what a person wants every new chat to know, set on the Settings page,
stored as the system message each chat they start begins with (and so in what the model reads,
in their data export and in the training data); chats already started keep theirs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.web.browser import BODY, Tabs
from tests.web.conftest import Browserless, Person


def _told(turns: tuple[Turn, ...]) -> str:
    """What the model was told before the question, then the question: the answer shows
    exactly what reached it."""
    system = [t.content for t in turns if t.role == "system"]
    return f"Told: {' | '.join(system) or 'nothing'}. You said: {turns[-1].content}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose scripted-echo says which system messages it was given."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED, reply=_told)]

    data_dir = tmp_path_factory.mktemp("instructions")
    config = data_dir / "lamplighter.toml"
    config.write_text(ROOMY_PLAN)
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    with LiveServer(settings, backends) as live:
        yield live


def _answer(events: list[tuple[str, Any]]) -> str:
    return "".join(data["text"] for name, data in events if name == "delta")


def test_new_chats_begin_with_the_instructions_and_older_chats_keep_theirs(
    web: Browserless,
) -> None:
    before = web.chat(content="Hello before.")
    assert _answer(before) == "Told: nothing. You said: Hello before."
    assert before[0][1]["system_message"] is None

    saved = web.api("PUT", "/me/instructions", json={"text": "  I teach chemistry.  "})
    assert saved.json() == {"text": "I teach chemistry."}
    assert web.api("GET", "/me/instructions").json() == {"text": "I teach chemistry."}

    events = web.chat(content="What is a mole?")
    assert _answer(events) == "Told: I teach chemistry.. You said: What is a mole?"
    start = events[0][1]
    system, question = start["system_message"], start["user_message"]
    assert system["role"] == "system" and system["content"] == "I teach chemistry."
    assert question["parent_id"] == system["id"] and system["parent_id"] is None
    assert start["title"] == "What is a mole?"
    conversation = start["conversation_id"]
    stored = web.tree(conversation)["messages"]
    assert [(m["role"], m["content"]) for m in stored][:2] == [
        ("system", "I teach chemistry."),
        ("user", "What is a mole?"),
    ]

    # The next turn, a regeneration and an edit of the first message keep them: they are the
    # chat's own now, even once the settings change.
    web.api("PUT", "/me/instructions", json={"text": "Answer in French."})
    answer_id = events[-1][1]["message"]["id"]
    follow = web.chat(conversation_id=conversation, parent_id=answer_id, content="And a gram?")
    assert _answer(follow) == "Told: I teach chemistry.. You said: And a gram?"
    roles = [m["role"] for m in web.tree(conversation)["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]  # one system message
    again = web.chat(conversation_id=conversation, parent_id=question["id"])
    assert _answer(again) == "Told: I teach chemistry.. You said: What is a mole?"
    edited = web.chat(conversation_id=conversation, parent_id=system["id"], content="A litre?")
    assert _answer(edited) == "Told: I teach chemistry.. You said: A litre?"
    # A client that edits the first message with parent_id null (the chat's first message has
    # none, as far as it knows) keeps them too: the new message goes under them.
    bare = web.chat(conversation_id=conversation, parent_id=None, content="A metre?")
    assert _answer(bare) == "Told: I teach chemistry.. You said: A metre?"
    assert bare[0][1]["user_message"]["parent_id"] == system["id"]
    # The chat started before any instructions still has none.
    old = before[0][1]
    follow_old = web.chat(
        conversation_id=old["conversation_id"],
        parent_id=old["message"]["id"],
        content="Still there?",
    )
    assert _answer(follow_old) == "Told: nothing. You said: Still there?"

    # Emptied: new chats begin with nothing again.
    assert web.api("PUT", "/me/instructions", json={"text": " \n "}).json() == {"text": ""}
    assert _answer(web.chat(content="Plain again.")) == "Told: nothing. You said: Plain again."


def test_instructions_too_long_are_refused_and_the_export_carries_them(web: Browserless) -> None:
    refused = web.api("PUT", "/me/instructions", json={"text": "x" * 1501})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "text"
    assert web.api("GET", "/me/instructions").json() == {"text": ""}  # nothing half-saved
    web.api("PUT", "/me/instructions", json={"text": "Call me Sam."})
    exported = json.loads(web.api("GET", "/me/export").content)
    assert exported["custom_instructions"] == "Call me Sam."


def test_set_on_the_settings_page_and_shown_at_the_top_of_the_next_chat(
    tabs: Tabs, person: Person
) -> None:
    tab = tabs.open()
    tab.login(person)
    tab.goto("/settings")
    page = tab.page
    box = page.get_by_test_id("instructions-text")
    box.fill("My name is Ada. Keep answers short.")
    expect(page.get_by_test_id("instructions-count")).to_have_text("35")
    page.get_by_test_id("instructions-save").click()
    expect(page.get_by_test_id("instructions-done")).to_contain_text("Saved")
    page.reload()
    expect(box).to_have_value("My name is Ada. Keep answers short.")

    tab.goto("/")
    tab.ready()
    answer = tab.echo("Who am I?")
    expect(answer.locator(BODY)).to_have_text(
        "Told: My name is Ada. Keep answers short.. You said: Who am I?"
    )
    shown = page.locator(".system-prompt")
    expect(shown).to_have_count(1)
    expect(shown).to_contain_text("My name is Ada. Keep answers short.")
    tab.reload()
    expect(page.locator(".system-prompt")).to_have_count(1)
