"""The web chat when the server cannot be reached for a while, in a real Chromium against the
real server: a chat that fails to load, a message that could not be sent, and the error banner
once the server answers again. The outage is Playwright refusing the page's requests
(``route.abort("connectionrefused")``), which the page sees exactly as a server that is down.

Chromium reports every refused request on the console; those are the only console errors these
tests allow.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Route, expect

from tests.conftest import SCRIPTED
from tests.web.browser import BODY, MESSAGE, Tab, Tabs
from tests.web.conftest import Browserless, Person

expect.set_options(timeout=15_000)

REFUSED = r"Failed to load resource: net::ERR_CONNECTION_REFUSED"
EVERY_API_CALL = "**/api/**"


@pytest.fixture
def tab(tabs: Tabs, person: Person) -> Tab:
    """A desktop tab, logged in as ``person``, talking to scripted-echo."""
    tabs.expect_console_error(REFUSED)
    opened = tabs.open()
    opened.login(person)
    opened.pick_model(SCRIPTED)
    return opened


def refuse(route: Route) -> None:
    route.abort("connectionrefused")


def sidebar_link(page: Page, conversation_id: str) -> Locator:
    return page.locator(f'[data-testid="conversation-item"][data-id="{conversation_id}"] a')


def new_chat_with(tab: Tab, text: str) -> tuple[str, str]:
    """Start a new chat with one exchange; returns the conversation's id and the answer's."""
    tab.page.get_by_test_id("new-chat").click()
    answer = tab.echo(text)
    answer_id = answer.get_attribute("data-id")
    assert answer_id
    return tab.conversation_id(), answer_id


def added_question(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    old = {m["id"] for m in before["messages"]}
    new = [m for m in after["messages"] if m["id"] not in old and m["role"] == "user"]
    assert len(new) == 1, new
    question: dict[str, Any] = new[0]
    return question


def roots(tree: dict[str, Any]) -> list[str]:
    return [m["id"] for m in tree["messages"] if m["parent_id"] is None]


def test_a_chat_that_fails_to_load_offers_retry_and_cannot_be_written_to_until_it_loads(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    conversation_id, answer_id = new_chat_with(tab, "the first question")
    title = page.get_by_test_id("conversation-title").first.inner_text()
    tab.composer.fill("a draft")  # this chat's own
    page.get_by_test_id("new-chat").click()
    expect(tab.composer).to_have_value("")
    before = web.tree(conversation_id)

    page.route(f"**/api/conversations/{conversation_id}", refuse)
    sidebar_link(page, conversation_id).click()
    failed = page.get_by_test_id("load-failed")
    expect(failed).to_be_visible()
    expect(failed).to_contain_text("Couldn't load this chat")
    expect(failed).to_contain_text("Could not reach the server")
    expect(page.locator("#welcome")).to_be_hidden()
    expect(page.locator(MESSAGE)).to_have_count(0)
    expect(page.locator("#topbar-title")).to_have_text(title)
    # Nothing can be sent into a chat whose history the page does not have: it would start a
    # new branch beside the old one, without its context.
    expect(tab.composer).to_be_disabled()
    expect(tab.composer).to_have_value("a draft")  # kept for when it loads
    expect(page.get_by_test_id("send")).to_be_disabled()
    retry = page.get_by_test_id("load-retry")
    expect(retry).to_be_enabled()
    tab.screenshot("chat-load-failed.png")

    # Retry while the server is still away: the same state again, not an empty chat.
    retry.click()
    expect(page.get_by_test_id("load-retry")).to_be_enabled()
    expect(tab.composer).to_be_disabled()

    page.unroute(f"**/api/conversations/{conversation_id}")
    page.get_by_test_id("load-retry").click()
    expect(failed).to_have_count(0)
    expect(tab.questions()).to_have_count(1)
    expect(tab.questions().first.locator(BODY)).to_have_text("the first question")
    expect(tab.answers().first).to_have_attribute("data-id", answer_id)
    expect(tab.composer).to_be_enabled()
    expect(tab.composer).to_be_focused()  # the Retry button it was on is gone

    tab.composer.fill("")
    answer = tab.echo("the second question")
    expect(answer.locator(BODY)).to_have_text("You said: the second question")
    after = web.tree(conversation_id)
    assert added_question(before, after)["parent_id"] == answer_id  # the thread goes on
    assert roots(after) == roots(before)  # no second root beside the first question


def test_a_message_that_could_not_be_sent_is_kept_across_chats_and_reloads_and_retry_sends_it(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    other_id, _ = new_chat_with(tab, "another chat")
    conversation_id, answer_id = new_chat_with(tab, "the first question")
    before = web.tree(conversation_id)

    page.route(EVERY_API_CALL, refuse)
    tab.send("Are you there?")
    unsent = tab.questions().last
    expect(unsent.locator(BODY)).to_have_text("Are you there?")
    note = page.get_by_test_id("message-note")
    expect(note).to_have_text("Connection lost")
    expect(page.get_by_test_id("retry")).to_be_enabled()

    # Away to another chat while the server is still down, and back once it is up again.
    sidebar_link(page, other_id).click()
    expect(page.get_by_test_id("load-failed")).to_be_visible()
    page.unroute(EVERY_API_CALL)
    sidebar_link(page, conversation_id).click()
    expect(tab.questions()).to_have_count(2)
    expect(tab.questions().last.locator(BODY)).to_have_text("Are you there?")
    expect(note).to_have_text("Connection lost")
    expect(page.get_by_test_id("error-banner")).to_be_hidden()  # the server answered again
    tab.reload()  # the page forgets; the browser does not
    expect(tab.questions()).to_have_count(2)
    expect(tab.questions().last.locator(BODY)).to_have_text("Are you there?")
    expect(note).to_have_text("Connection lost")

    page.get_by_test_id("retry").click()
    answer = tab.answer_done()
    expect(answer.locator(BODY)).to_have_text("You said: Are you there?")
    expect(note).to_have_count(0)
    after = web.tree(conversation_id)
    assert added_question(before, after)["parent_id"] == answer_id
    assert added_question(before, after)["content"] == "Are you there?"

    # The first message of a new chat, too: kept until New chat is opened again.
    page.get_by_test_id("new-chat").click()
    page.route(EVERY_API_CALL, refuse)
    tab.send("Hello from a new chat")
    expect(note).to_have_text("Connection lost")
    page.unroute(EVERY_API_CALL)
    sidebar_link(page, other_id).click()
    expect(tab.answers()).to_have_count(1)
    expect(note).to_have_count(0)
    page.get_by_test_id("new-chat").click()
    expect(tab.questions().last.locator(BODY)).to_have_text("Hello from a new chat")
    tab.reload()
    expect(tab.questions().last.locator(BODY)).to_have_text("Hello from a new chat")
    expect(note).to_have_text("Connection lost")
    page.get_by_test_id("retry").click()
    answer = tab.answer_done()
    expect(answer.locator(BODY)).to_have_text("You said: Hello from a new chat")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}$"))
    assert tab.conversation_id() not in (conversation_id, other_id)
    tab.reload()  # sent: nothing unsent is left to show
    expect(note).to_have_count(0)
    page.get_by_test_id("new-chat").click()
    expect(tab.questions()).to_have_count(0)


def test_the_connection_banner_clears_once_the_server_answers_but_a_rate_limit_one_stays(
    tab: Tab, tabs: Tabs
) -> None:
    tabs.expect_console_error(r"Failed to load resource: .* 429")
    page = tab.page
    banner = page.get_by_test_id("error-banner")
    conversation_id, _ = new_chat_with(tab, "the first question")
    page.get_by_test_id("new-chat").click()

    limited = "Rate limit reached: 3 requests per minute. Try again in 20 s."
    page.route(
        "**/api/chat",
        lambda route: route.fulfill(
            status=429,
            headers={"retry-after": "20"},
            content_type="application/json",
            body=json.dumps({"error": {"message": limited, "type": "rate_limit_error"}}),
        ),
    )
    tab.send("too soon")
    expect(banner).to_contain_text(limited)
    expect(tab.composer).to_have_value("too soon")
    page.unroute("**/api/chat")
    # Opening a chat says nothing about the limit: that banner still applies.
    sidebar_link(page, conversation_id).click()
    expect(tab.answers()).to_have_count(1)
    expect(banner).to_contain_text(limited)

    page.get_by_test_id("new-chat").click()
    page.route("**/api/conversations?*", refuse)
    page.get_by_test_id("search").fill("first")
    expect(banner).to_contain_text("Could not reach the server")
    page.unroute("**/api/conversations?*")
    sidebar_link(page, conversation_id).click()
    expect(tab.answers()).to_have_count(1)
    expect(banner).to_be_hidden()
