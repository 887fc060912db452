"""The web chat in a real browser (Chromium, through Playwright), against the real server:
streaming and stopping with the real embedded model, branches, ratings, the sidebar, phones,
touch screens and keyboards, a lost connection, logging out and a session that ends, and that
nothing a model writes runs as script.

Each test gets fresh browser contexts (fresh cookies and storage) and fails on any console
error, which is where Chromium reports Content-Security-Policy violations.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from playwright.sync_api import Route, expect

from tests.conftest import MODEL, SCRIPTED, LiveServer
from tests.web.browser import (
    ANSWER,
    BODY,
    MESSAGE,
    PHONE,
    Tab,
    Tabs,
    eventually,
    one_starts_the_other,
    words,
)
from tests.web.conftest import Browserless, Person, new_person

expect.set_options(timeout=15_000)


@pytest.fixture
def tab(tabs: Tabs, person: Person) -> Tab:
    """A desktop tab, logged in as ``person`` through the login form."""
    opened = tabs.open()
    opened.login(person)
    return opened


def stored_answer(web: Browserless, conversation_id: str, message_id: str) -> dict[str, Any]:
    tree = web.tree(conversation_id)
    found = [m for m in tree["messages"] if m["id"] == message_id]
    assert found, f"the server has no message {message_id}"
    message: dict[str, Any] = found[0]
    return message


# 1. Streaming with the real model, and stopping it -------------------------------------------

GROWN = """([selector, before]) => {
    const body = document.querySelector(selector);
    const text = body ? body.textContent.trim() : '';
    return text.length > before.length ? text : false;
}"""
STREAMING_BODY = f'{ANSWER}[data-status="in_progress"] {BODY}'


def watch_it_grow(tab: Tab) -> None:
    """Wait until the streaming answer has shown two different, non-empty texts."""
    first = tab.page.wait_for_function(GROWN, arg=[STREAMING_BODY, ""], timeout=90_000)
    first_text = first.json_value()
    second = tab.page.wait_for_function(GROWN, arg=[STREAMING_BODY, first_text], timeout=60_000)
    second_text = second.json_value()
    assert first_text and len(second_text) > len(first_text)


def test_the_real_model_streams_and_stop_keeps_the_partial_answer(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    expect(page.locator("#model-select")).to_have_value(MODEL)  # the default, left as it is
    tab.send("Write a long poem about the sea.")
    watch_it_grow(tab)
    page.get_by_test_id("stop").click()

    answer = tab.answers().last
    expect(answer).to_have_attribute("data-status", "cut")
    expect(answer.get_by_test_id("message-note")).to_have_text("Stopped")
    expect(page.get_by_test_id("send")).to_be_visible()
    shown = answer.locator(BODY).inner_text()
    assert shown.strip(), "the partial answer disappeared"

    conversation_id = tab.conversation_id()
    message_id = answer.get_attribute("data-id")
    assert message_id
    stored = eventually(
        lambda: (m := stored_answer(web, conversation_id, message_id))["status"] == "cut" and m,
        what="the server to store the stopped answer as cut",
    )
    assert stored["content"].strip()
    assert one_starts_the_other(shown, stored["content"]), (shown, stored["content"])
    # The page re-reads the conversation and shows the server's copy, still as stopped.
    eventually(
        lambda: words(answer.locator(BODY).inner_text()) == words(stored["content"]),
        what="the page to show the stored partial answer",
    )
    expect(answer.get_by_test_id("message-note")).to_have_text("Stopped")
    tab.reload()
    expect(answer).to_have_attribute("data-status", "cut")
    expect(answer.get_by_test_id("message-note")).to_have_text("Stopped")
    assert words(answer.locator(BODY).inner_text()) == words(stored["content"])

    # Escape stops too (the focus is still in the message box).
    tab.send("Now a short one about rivers.")
    watch_it_grow(tab)
    tab.composer.press("Escape")
    second = tab.answers().last
    expect(second).to_have_attribute("data-status", "cut")
    expect(second.get_by_test_id("message-note")).to_have_text("Stopped")
    second_id = second.get_attribute("data-id")
    assert second_id and second_id != message_id
    eventually(
        lambda: stored_answer(web, conversation_id, second_id)["status"] == "cut",
        what="the server to store the second stopped answer as cut",
    )


# 2. Branches ----------------------------------------------------------------------------------


def test_regenerate_and_edit_make_branches_that_survive_a_reload(tab: Tab) -> None:
    tab.pick_model(SCRIPTED)
    answer = tab.echo("one")
    expect(answer.locator(BODY)).to_have_text("You said: one")
    first_answer = answer.get_attribute("data-id")
    expect(answer.get_by_test_id("branch-label")).to_have_count(0)

    with tab.branch_saved():
        answer.get_by_test_id("regenerate").click()
        tab.answer_done()
    answer = tab.answers().last
    expect(answer.get_by_test_id("branch-label")).to_have_text("2 / 2")
    second_answer = answer.get_attribute("data-id")
    assert second_answer != first_answer

    with tab.branch_saved():
        answer.get_by_test_id("branch-prev").click()
    expect(answer.get_by_test_id("branch-label")).to_have_text("1 / 2")
    expect(answer).to_have_attribute("data-id", first_answer or "")

    tab.reload()
    answer = tab.answers().last
    expect(answer).to_have_attribute("data-id", first_answer or "")
    expect(answer.get_by_test_id("branch-label")).to_have_text("1 / 2")

    question = tab.questions().first
    question.get_by_test_id("edit").click()
    edit = question.get_by_test_id("edit-input")
    expect(edit).to_be_focused()
    expect(edit).to_have_value("one")
    edit.fill("two")
    with tab.branch_saved():
        question.get_by_test_id("edit-save").click()
        tab.answer_done()
    expect(tab.questions()).to_have_count(1)
    expect(question.locator(BODY)).to_have_text("two")
    expect(question.get_by_test_id("branch-label")).to_have_text("2 / 2")
    expect(tab.answers().last.locator(BODY)).to_have_text("You said: two")

    with tab.branch_saved():
        question.get_by_test_id("branch-prev").click()
    expect(question.locator(BODY)).to_have_text("one")
    expect(question.get_by_test_id("branch-label")).to_have_text("1 / 2")
    expect(tab.answers().last.locator(BODY)).to_have_text("You said: one")
    shown_answer = tab.answers().last.get_attribute("data-id")

    tab.reload()
    expect(question.locator(BODY)).to_have_text("one")
    expect(question.get_by_test_id("branch-label")).to_have_text("1 / 2")
    expect(tab.answers().last).to_have_attribute("data-id", shown_answer or "")
    expect(tab.answers().last.locator(BODY)).to_have_text("You said: one")


# 3. Ratings -----------------------------------------------------------------------------------


def test_a_rating_with_reason_and_comment_is_stored_and_shown_after_a_reload(
    tab: Tab, web: Browserless
) -> None:
    tab.pick_model(SCRIPTED)
    answer = tab.echo("What is the capital of Atlantis?")
    answer_id = answer.get_attribute("data-id")
    assert answer_id
    conversation_id = tab.conversation_id()

    answer.get_by_test_id("thumbs-down").click()
    form = answer.get_by_test_id("rating-form")
    expect(form).to_be_visible()
    form.locator('[data-testid="rating-reason"][value="not_factual"]').check()
    form.get_by_test_id("rating-comment").fill("Atlantis is a myth.")
    form.get_by_test_id("rating-save").click()
    expect(answer.get_by_text("Thanks for your feedback!")).to_be_visible()
    expect(form).to_have_count(0)

    tab.reload()
    expect(answer.get_by_test_id("thumbs-down")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_test_id("thumbs-up")).to_have_attribute("aria-pressed", "false")
    assert stored_answer(web, conversation_id, answer_id)["rating"] == {
        "rating": -1,
        "reasons": ["not_factual"],
        "comment": "Atlantis is a myth.",
    }

    answer.get_by_test_id("thumbs-up").click()
    expect(answer.get_by_test_id("thumbs-up")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_test_id("thumbs-down")).to_have_attribute("aria-pressed", "false")
    eventually(
        lambda: (stored_answer(web, conversation_id, answer_id)["rating"] or {}).get("rating") == 1,
        what="the thumbs-up to be stored",
    )
    # A thumbs-up asks what was good, with praise to pick, not the complaints of a thumbs-down.
    expect(form).to_contain_text("What did you like about this answer?")
    expect(form.get_by_test_id("rating-reason").locator("xpath=..")).to_have_text(
        ["Accurate", "Helpful", "Clear and well written", "Other"]
    )
    form.get_by_text("Clear and well written").click()
    form.get_by_test_id("rating-save").click()
    expect(answer.get_by_text("Thanks for your feedback!")).to_be_visible()
    assert stored_answer(web, conversation_id, answer_id)["rating"] == {
        "rating": 1,
        "reasons": ["well_written"],
        "comment": None,
    }


def test_the_feedback_form_opens_in_view_with_the_focus_in_it(tabs: Tabs, person: Person) -> None:
    tab = tabs.open(viewport={"width": 1280, "height": 560})
    tab.login(person)
    tab.pick_model(SCRIPTED)
    for n in range(3):  # enough to fill the thread, so the last answer ends at its bottom
        tab.echo(f"question {n}: " + "a few more words to make it longer " * 8)
    answer = tab.answers().last
    answer.get_by_test_id("thumbs-down").click()
    form = answer.get_by_test_id("rating-form")
    expect(form).to_be_visible()
    expect(form).to_contain_text("What was wrong with this answer?")
    expect(form.get_by_test_id("rating-reason").first).to_be_focused()
    shown = tab.page.locator("#thread").bounding_box()
    box = form.bounding_box()
    assert shown and box
    assert shown["y"] - 1 <= box["y"], (shown, box)
    assert box["y"] + box["height"] <= shown["y"] + shown["height"] + 1, (shown, box)

    tab.page.keyboard.press("Escape")  # closes the form, back on the thumb
    expect(form).to_have_count(0)
    expect(answer.get_by_test_id("thumbs-down")).to_be_focused()


# 4. Nothing a model writes runs ----------------------------------------------------------------

XSS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "[click](javascript:window.__pwned=1)",
    '<a href="javascript:window.__pwned=1">x</a>',
]


def test_answers_cannot_run_script_or_break_the_layout(tab: Tab) -> None:
    response = tab.goto("/")
    assert response is not None and response.status == 200
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
    tab.ready()

    tab.pick_model(SCRIPTED)
    for payload in XSS:
        answer = tab.echo(payload)
        expect(answer.locator(BODY)).to_have_text(f"You said: {payload}")  # as the text it is
    long_line = "x" * 5000
    tab.echo(long_line)
    expect(tab.answers()).to_have_count(len(XSS) + 1)

    page = tab.page
    thread = page.locator("#messages")
    expect(thread.locator(f"{BODY} script, {BODY} img")).to_have_count(0)
    expect(thread.locator('a[href^="javascript:" i]')).to_have_count(0)
    expect(page.locator('a[href^="javascript:" i]')).to_have_count(0)
    for payload in XSS:
        expect(tab.questions().locator(BODY).filter(has_text=payload)).to_have_count(1)
    for index in range(len(XSS)):  # click every answer's text, the "[click](...)" one too
        tab.answers().nth(index).locator(BODY).click()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert tab.no_horizontal_scroll()
    expect(page).to_have_url(re.compile(r"/c/"))  # the clicks went nowhere
    assert len(page.context.pages) == 1


# 5. Another user's conversation ---------------------------------------------------------------


def test_another_users_conversation_is_not_found(
    tabs: Tabs, server: LiveServer, web: Browserless
) -> None:
    secret = "the treasure is under the old oak tree"
    events = web.chat(content=secret)
    conversation_id = events[0][1]["conversation_id"]
    assert events[-1][0] == "done"

    # Chromium reports the 404 page's own status on the console.
    tabs.expect_console_error(rf"/c/{conversation_id}:\d+: Failed to load resource: .* 404")
    stranger = tabs.open()
    stranger.login(new_person(server))
    response = stranger.goto(f"/c/{conversation_id}")
    assert response is not None and response.status == 404
    page = stranger.page
    expect(page.get_by_test_id("not-found")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("treasure")

    stranger.goto("/")
    stranger.ready()
    expect(page.locator("#conv-empty")).to_have_text("Your chats will appear here.")
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text("treasure")
    api = page.request.get(stranger.url(f"/api/conversations/{conversation_id}"))
    assert api.status == 404


# 6. The sidebar ---------------------------------------------------------------------------------


def test_sidebar_lists_renames_searches_and_deletes(tab: Tab, web: Browserless) -> None:
    tab.pick_model(SCRIPTED)
    ids: dict[str, str] = {}
    for text in ["alpha apples", "beta bananas", "gamma grapes"]:
        if ids:
            tab.page.get_by_test_id("new-chat").click()
            expect(tab.page).to_have_url(tab.url("/"))
            expect(tab.page.locator(MESSAGE)).to_have_count(0)
        tab.echo(text)
        ids[text] = tab.conversation_id()
        expect(tab.page.locator("#topbar-title")).to_have_text(text)
    expect(tab.sidebar_titles()).to_have_text(["gamma grapes", "beta bananas", "alpha apples"])

    item = tab.page.get_by_test_id("conversation-item").filter(has_text="beta bananas")
    item.hover()
    item.get_by_test_id("rename").click()
    rename = tab.page.get_by_test_id("rename-input")
    expect(rename).to_be_focused()
    rename.fill("Fruit salad")
    with tab.page.expect_response(lambda r: r.request.method == "PATCH"):
        rename.press("Enter")
    expect(tab.page.get_by_test_id("rename-input")).to_have_count(0)
    tab.reload()
    expect(tab.sidebar_titles()).to_contain_text(["Fruit salad"])
    expect(tab.sidebar_titles()).to_have_count(3)
    assert web.tree(ids["beta bananas"])["title"] == "Fruit salad"

    search = tab.page.get_by_test_id("search")
    search.fill("bananas")  # only in the renamed conversation's messages, no longer its title
    expect(tab.sidebar_titles()).to_have_text(["Fruit salad"])
    search.fill("You said")
    expect(tab.sidebar_titles()).to_have_count(3)
    search.fill("no such words anywhere")
    expect(tab.sidebar_titles()).to_have_count(0)
    expect(tab.page.locator("#conv-empty")).to_have_text("No chats match your search.")
    search.fill("")
    expect(tab.sidebar_titles()).to_have_count(3)

    doomed = tab.page.get_by_test_id("conversation-item").filter(has_text="alpha apples")
    doomed.hover()
    doomed.get_by_test_id("delete").click()
    dialog = tab.page.get_by_test_id("confirm-delete")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("alpha apples")
    dialog.get_by_test_id("confirm-delete-ok").click()
    expect(dialog).to_be_hidden()
    expect(doomed).to_have_count(0)
    expect(tab.sidebar_titles()).to_have_count(2)
    assert web.api("GET", f"/conversations/{ids['alpha apples']}").status_code == 404
    tab.reload()
    expect(tab.sidebar_titles()).to_have_count(2)
    expect(tab.page.get_by_test_id("conversation-item").filter(has_text="alpha")).to_have_count(0)


# 7. Keyboard and phone --------------------------------------------------------------------------


def test_on_a_phone_the_menu_opens_the_sidebar_and_enter_sends(tabs: Tabs, person: Person) -> None:
    tab = tabs.open(viewport=PHONE)
    tab.login(person)
    page = tab.page
    sidebar = page.locator("#sidebar")
    menu = page.get_by_test_id("menu")
    expect(sidebar).to_be_hidden()
    expect(menu).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(sidebar).to_be_visible()
    expect(page.get_by_test_id("new-chat")).to_be_in_viewport()
    expect(menu).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")

    tab.pick_model(SCRIPTED)
    tab.composer.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(tab.composer).to_have_value("first line\nsecond line")
    expect(page.locator(MESSAGE)).to_have_count(0)
    page.keyboard.press("Enter")
    question = tab.questions().first
    expect(question.locator(BODY)).to_have_text("first line second line")
    assert question.locator(BODY).text_content() == "first line\nsecond line"
    expect(tab.composer).to_have_value("")
    answer = tab.answer_done()
    expect(answer.locator(BODY)).to_have_text("You said: first line second line")
    assert tab.no_horizontal_scroll()


def test_on_a_touch_screen_enter_starts_a_new_line_and_the_send_button_sends(
    tabs: Tabs, person: Person
) -> None:
    """A phone's keyboard has no Shift+Enter: Enter sending left no way to write a new line."""
    tab = tabs.open(viewport=PHONE, has_touch=True, is_mobile=True)
    tab.login(person)
    tab.pick_model(SCRIPTED)
    page = tab.page
    expect(tab.composer).to_have_attribute("enterkeyhint", "enter")
    tab.composer.tap()
    page.keyboard.type("first line")
    page.keyboard.press("Enter")
    page.keyboard.type("second line")
    expect(tab.composer).to_have_value("first line\nsecond line")
    expect(page.locator(MESSAGE)).to_have_count(0)
    page.get_by_test_id("send").tap()
    answer = tab.answer_done()
    assert tab.questions().first.locator(BODY).text_content() == "first line\nsecond line"
    expect(answer.locator(BODY)).to_have_text("You said: first line second line")

    # An edit too: Enter is a new line, its Send button sends.
    tab.questions().first.get_by_test_id("edit").tap()
    edit = page.get_by_test_id("edit-input")
    expect(edit).to_have_attribute("enterkeyhint", "enter")
    edit.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type("third line")
    expect(edit).to_have_value("first line\nsecond line\nthird line")
    page.get_by_test_id("edit-save").tap()
    expect(tab.answer_done().locator(BODY)).to_have_text(
        "You said: first line second line third line"
    )


def test_on_a_phone_the_chat_title_has_the_room_and_plan_and_billing_is_a_sidebar_action(
    tabs: Tabs, server: LiveServer
) -> None:
    plan = f"one-model-{uuid.uuid4().hex[:6]}"
    server.call(lambda s: s.plans.put(plan, {"models": [SCRIPTED], "cache_ttl_s": 0}, create=True))
    tab = tabs.open(viewport=PHONE)
    tab.login(new_person(server, plan=plan))
    page = tab.page
    tab.echo("Tides, moons and the long shallow beaches of the North Sea coast")
    title, model = page.locator("#topbar-title"), page.locator("#model-name")
    expect(title).to_have_text("Tides, moons and the long shallow beaches of the North Sea coast")
    expect(model).to_have_text(SCRIPTED)
    expect(model).to_have_attribute("title", f"Model: {SCRIPTED}")
    sizes = page.evaluate(
        """() => ({
        title: document.querySelector('#topbar-title').getBoundingClientRect().width,
        model: document.querySelector('#model-name').getBoundingClientRect().width,
        bar: document.querySelector('.topbar').getBoundingClientRect().width,
    })"""
    )
    # The model's name was a pill of up to 9rem, leaving the title ~15 characters of 375 px.
    assert sizes["model"] <= 96, sizes
    assert sizes["title"] >= 0.55 * sizes["bar"], sizes
    tab.screenshot("phone-topbar.png")

    # Plan & billing looks like the sidebar's other actions (it read as plain, centred text).
    page.get_by_test_id("menu").click()
    billing, logout = page.get_by_test_id("billing-open"), page.get_by_test_id("logout")
    expect(billing).to_be_in_viewport(ratio=1)
    style = """(el) => {
        const s = getComputedStyle(el);
        const icon = el.querySelector('svg');
        const edge = el.closest('.sidebar').getBoundingClientRect().left; // it may be sliding in
        return {
            justify: s.justifyContent, color: s.color, size: s.fontSize,
            padding: s.paddingLeft, icon: icon ? icon.getBoundingClientRect().left - edge : null,
        };
    }"""
    looks, like = billing.evaluate(style), logout.evaluate(style)
    assert looks["icon"] is not None, "Plan & billing has no icon"
    assert looks == like, (looks, like)
    tab.screenshot("phone-sidebar.png")


# 8. A lost connection ---------------------------------------------------------------------------


def test_a_stream_that_ends_early_shows_connection_lost_and_retry_completes(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    tab.pick_model(SCRIPTED)
    cut_bodies: list[bytes] = []

    def cut_short(route: Route) -> None:
        """Let the real request through, then hand the page only its start and first two
        deltas: the stream ends there, without an error and without done."""
        response = route.fetch()
        events = response.body().split(b"\n\n")
        assert events[0].startswith(b"event: start"), events[0]
        assert any(e.startswith(b"event: done") for e in events)
        deltas = [e for e in events if e.startswith(b"event: delta")]
        body = b"\n\n".join([events[0], *deltas[:2]]) + b"\n\n"
        cut_bodies.append(body)
        route.fulfill(response=response, body=body)

    page.route("**/api/chat", cut_short)
    tab.send("please repeat these seven words back")
    answer = tab.answers().last
    expect(answer.get_by_test_id("message-note")).to_have_text("Connection lost")
    expect(answer.locator(BODY)).to_have_text("You said:")
    expect(answer).to_have_attribute("data-status", "cut")
    expect(answer.get_by_test_id("retry")).to_be_enabled()
    expect(page.get_by_test_id("send")).to_be_visible()
    assert len(cut_bodies) == 1
    lost_id = answer.get_attribute("data-id")

    page.unroute("**/api/chat")
    answer = tab.retry_completes(answer, "please repeat these seven words back")
    retried_id = answer.get_attribute("data-id")

    # The server finished the first answer too (its whole stream was read, only the page
    # missed the end); both are stored whole, under the one question.
    tree = web.tree(tab.conversation_id())
    answers = {m["id"]: m for m in tree["messages"] if m["role"] == "assistant"}
    assert set(answers) == {lost_id, retried_id}
    for stored in answers.values():
        assert stored["status"] == "complete"
        assert stored["content"] == "You said: please repeat these seven words back"
    assert len({m["parent_id"] for m in answers.values()}) == 1
    assert tree["current_leaf_id"] == retried_id


# 9. Logging out -------------------------------------------------------------------------------


def test_logout_ends_the_session(tab: Tab) -> None:
    page = tab.page
    page.get_by_test_id("logout").click()
    expect(page).to_have_url(tab.url("/login"))
    expect(page.get_by_test_id("login-submit")).to_be_visible()
    tab.goto("/")
    expect(page).to_have_url(tab.url("/login"))
    assert page.request.get(tab.url("/api/me")).status == 401


def test_a_session_that_ends_mid_chat_says_so_and_comes_back_to_the_chat_after_logging_in(
    tabs: Tabs, person: Person, web: Browserless
) -> None:
    tabs.expect_console_error(r"Failed to load resource: .* 401")
    tab = tabs.open()
    tab.login(person)
    tab.pick_model(SCRIPTED)
    page = tab.page
    tab.echo("where was I?")
    chat = tab.conversation_id()
    # "Log out everywhere" from another device ends this page's session too.
    everywhere = web.http.post("/logout", params={"everywhere": "1"}, data={"csrf_token": web.csrf})
    assert everywhere.status_code == 303

    # A slow server: a message sent now would be answered only after the page left for the login
    # page (the page finds the session ended when it reads the chat again before sending).
    page.route("**/api/chat", lambda route: None)  # held, never answered
    tab.send("still there?")
    expect(page).to_have_url(re.compile(r"/login\?"))
    page.unroute("**/api/chat")
    expect(page.get_by_test_id("session-ended")).to_have_text("Your session ended; log in again.")
    page.get_by_test_id("login-email").fill(person.email)
    page.get_by_test_id("login-password").fill(person.password)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(tab.url(f"/c/{chat}"))  # not the home page
    tab.ready()
    expect(tab.questions().first.locator(BODY)).to_have_text("where was I?")
    expect(tab.composer).to_have_value("still there?")  # what was being sent is not lost

    # A chat's link opened logged out goes there too, once logged in.
    other = tabs.open()
    other.goto(f"/c/{chat}")
    expect(other.page).to_have_url(re.compile(r"/login\?next="))
    expect(other.page.get_by_test_id("session-ended")).to_have_count(0)  # nothing ended
    other.page.get_by_test_id("login-email").fill(person.email)
    other.page.get_by_test_id("login-password").fill(person.password)
    other.page.get_by_test_id("login-submit").click()
    expect(other.page).to_have_url(other.url(f"/c/{chat}"))
    other.ready()
    expect(other.questions().first.locator(BODY)).to_have_text("where was I?")


def test_training_consent_is_a_checkbox_that_sticks(tab: Tab, web: Browserless) -> None:
    """The organisation's default (off here) until the person chooses; the choice is stored."""
    page = tab.page
    consent = page.get_by_test_id("consent")
    expect(consent).to_be_enabled()
    expect(consent).not_to_be_checked()
    consent.check()
    expect(consent).to_be_enabled()  # the PUT came back
    assert web.api("GET", "/me/consent").json()["use_for_training"] is True
    page.reload()
    expect(page.get_by_test_id("consent")).to_be_checked()
    page.get_by_test_id("consent").uncheck()
    expect(page.get_by_test_id("consent")).to_be_enabled()
    assert web.api("GET", "/me/consent").json() == {
        "use_for_training": False,
        "chosen": True,
        "organisation_default": False,
    }


# 10. Markdown and screenshots -----------------------------------------------------------------

MARKDOWN = """Here are the release notes:

## Lamplighter 1.0

- streaming answers
- branches you can **walk back**

| Feature | Status |
|---------|--------|
| Search  | done   |
| Ratings | done   |

```python
def greet(name):
    return f"Hello, {name}!"
```
"""
CODE = 'def greet(name):\n    return f"Hello, {name}!"\n'


def test_markdown_answers_render_and_the_screens_look_right(tabs: Tabs, person: Person) -> None:
    tab = tabs.open()
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=tab.base_url)
    tab.login(person)
    tab.pick_model(SCRIPTED)
    tab.echo(MARKDOWN)
    body = tab.answers().last.locator(BODY)
    expect(body.locator("table")).to_have_count(1)
    expect(body.locator("table td")).to_have_count(4)
    expect(body.locator("h1, h2, h3")).to_have_text(["Lamplighter 1.0"])
    expect(body.locator("ul > li, ol > li")).to_have_count(2)
    expect(body.locator("pre")).to_have_count(1)
    assert tab.no_horizontal_scroll()
    conversation_id = tab.conversation_id()
    tab.page.mouse.move(0, 0)
    tab.screenshot("web-chat.png")

    copy = body.get_by_test_id("copy-code")
    expect(copy).to_have_text("Copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert tab.page.evaluate("navigator.clipboard.readText()") == CODE

    phone = tabs.open(viewport=PHONE)
    phone.login(person)
    phone.goto(f"/c/{conversation_id}")
    phone.ready()
    expect(phone.answers().last.locator(f"{BODY} table")).to_be_visible()
    assert phone.no_horizontal_scroll()
    phone.screenshot("web-chat-phone.png")
