"""A conversation an API client had with tools, opened in the web chat in a real Chromium: the
answer that called a tool shows the call (the function's name and its arguments), the tool's
message reads as that tool's result (never as "System instructions") with nothing to rate,
regenerate or edit, the answer after it reads as any other, and the person can go on with the
chat in the page.

The backend is the vLLM-shaped upstream of tests/test_tools.py: it calls ``get_weather`` when
asked with tools, answers in text once the tool's result is in, and answers the web chat (which
sends no tools) in text too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import LiveServer
from tests.test_router import sse
from tests.test_tools import ASK, SUNNY, TOOL_MODEL, WEATHER, _answer, _choice
from tests.upstream_server import gateway_over, recording
from tests.web.browser import BODY, MESSAGE, Tabs
from tests.web.conftest import Person

expect.set_options(timeout=15_000)

RESULT = '{"sky": "clear", "celsius": 21}'
FOLLOW_UP = "And should I take an umbrella?"
NO_UMBRELLA = "No umbrella needed today."
MONOSPACE = re.compile("monospace")
Bodies = list[dict[str, Any]]


def _answer_or_chat(body: dict[str, Any]) -> bytes:
    """tests/test_tools.py's backend; a plain answer to a question asked without tools."""
    if body.get("tools") or body["messages"][-1]["role"] == "tool":
        return _answer(body)
    usage = {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 4}}
    return sse(
        _choice({"role": "assistant", "content": NO_UMBRELLA}),
        _choice({}, "stop"),
        usage,
        "[DONE]",
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Bodies]]:
    """A gateway whose backend calls tools; and the bodies that backend received."""
    data_dir = tmp_path_factory.mktemp("tool-use")
    with (
        recording(_answer_or_chat) as (url, received),
        gateway_over(url, (TOOL_MODEL,), data_dir, capacity=4) as live,
    ):
        yield live, received


@pytest.fixture(scope="module")
def server(gateway: tuple[LiveServer, Bodies]) -> LiveServer:
    """This module's own server (it replaces the session's)."""
    return gateway[0]


def _talk_with_tools(server: LiveServer, person: Person) -> None:
    """The person's API client asks, runs the tool the model called and gets the answer."""
    key = server.call(lambda s: s.accounts.create_key(person.email, "test")).secret
    client = server.client(key)
    first = client.chat.completions.create(model=TOOL_MODEL, messages=[ASK], tools=[WEATHER])  # type: ignore[list-item]
    [call] = first.choices[0].message.tool_calls or []
    result = {"role": "tool", "tool_call_id": call.id, "content": RESULT}
    second = client.chat.completions.create(
        model=TOOL_MODEL,
        messages=[ASK, first.choices[0].message.model_dump(), result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.choices[0].message.content == SUNNY


def test_a_conversation_with_tools_shows_the_call_and_its_result_and_goes_on_in_the_page(
    tabs: Tabs, gateway: tuple[LiveServer, Bodies], person: Person
) -> None:
    live, received = gateway
    _talk_with_tools(live, person)
    tab = tabs.open()
    tab.login(person)
    page = tab.page
    page.get_by_test_id("conversation-title").filter(has_text=ASK["content"]).click()
    messages = page.locator(MESSAGE)
    expect(messages).to_have_count(4)
    for i, role in enumerate(["user", "assistant", "tool", "assistant"]):
        expect(messages.nth(i)).to_have_attribute("data-role", role)
    calling, result, answer = messages.nth(1), messages.nth(2), messages.nth(3)

    # The answer that called the tool: no empty bubble, but the call, folded, with its
    # arguments pretty-printed when opened.
    expect(calling.locator(BODY)).to_have_count(0)
    expect(calling.get_by_test_id("copy-message")).to_have_count(0)  # it has no text to copy
    # Rated, but not made again nor rewritten: the page cannot offer the client's tools.
    expect(calling.get_by_test_id("thumbs-up")).to_be_visible()
    for control in ["regenerate", "improve"]:
        expect(calling.get_by_test_id(control)).to_have_count(0)
    call = calling.get_by_role("group", name="Called get_weather")
    expect(call.locator("summary")).to_have_text("Called get_weather")
    arguments = call.get_by_test_id("tool-arguments")
    expect(arguments).to_be_hidden()
    call.locator("summary").click()
    expect(arguments).to_be_visible()
    expect(arguments).to_have_text('{\n  "city": "Paris"\n}')
    expect(arguments).to_have_css("font-family", MONOSPACE)

    # The tool's message: that call's result, folded, with nothing to rate, regenerate or edit.
    expect(result).to_have_attribute("aria-label", "Result of get_weather")
    expect(page.get_by_text("System instructions")).to_have_count(0)
    output = result.get_by_role("group", name="Result of get_weather")
    expect(output.locator("summary")).to_have_text("Result of get_weather")
    shown = output.get_by_test_id("tool-output")
    expect(shown).to_be_hidden()
    output.locator("summary").click()
    expect(shown).to_have_text(json.dumps(json.loads(RESULT), indent=2))
    for control in ["thumbs-up", "thumbs-down", "regenerate", "improve", "edit", "copy-message"]:
        expect(result.get_by_test_id(control)).to_have_count(0)

    # The answer after it reads and can be rated as any other (it answers the tool's result,
    # which the page cannot ask for again).
    expect(answer.locator(BODY)).to_have_text(SUNNY)
    expect(answer.get_by_test_id("thumbs-up")).to_be_visible()
    expect(answer.get_by_test_id("regenerate")).to_have_count(0)
    expect(answer.get_by_role("group")).to_have_count(0)

    # Going on in the page: the backend gets the tool turns along, and the thread keeps them.
    tab.send(FOLLOW_UP)
    expect(tab.answers()).to_have_count(3)
    expect(tab.answer_done().locator(BODY)).to_have_text(NO_UMBRELLA)
    sent = received[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
    assert sent[2]["content"] == RESULT
    expect(messages.nth(2)).to_have_attribute("aria-label", "Result of get_weather")
    expect(calling.get_by_role("group", name="Called get_weather")).to_be_attached()
