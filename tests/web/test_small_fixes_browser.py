"""Small things in the web pages, in a real Chromium against the real server: an answer a
stopping server cut off says so and offers Retry (not "Stopped"), and Retry alone (not beside
Regenerate, which would do the same), the operator console fits a phone, renaming a chat with
Enter leaves the focus on that chat's Rename button, the plan's requests this minute read as
what is left, and a live API key pasted into a message is warned about above the answer.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from playwright.sync_api import Route, ViewportSize, expect

from tests.conftest import SCRIPTED, LiveServer
from tests.web.browser import BODY, Tab, Tabs
from tests.web.conftest import Person, new_person

expect.set_options(timeout=15_000)

PHONE_390: ViewportSize = {"width": 390, "height": 844}
CONSOLE_SECTIONS = ["dashboard", "plans", "users", "usage", "review", "flywheel"]


# 1. An answer cut off by a stopping server ------------------------------------------------------


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}".encode()


def parsed(frame: bytes) -> tuple[str, dict[str, Any]]:
    name, data = "", {}
    for line in frame.decode().splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
    return name, data


SHUTTING_DOWN = {
    "error": {
        "message": "This server is shutting down; try again.",
        "type": "server_error",
        "code": "server_shutting_down",
    }
}


def cut_by_shutdown(ending: str) -> Any:
    """A route handler: let the real request through, then hand the page the stream a stopping
    server sends at its deadline. ``done``: the start, two deltas and a done whose message is
    stored as cut with finish_reason "shutdown" (what /api/chat sends); ``error``: the start,
    two deltas and an error event with the code server_shutting_down."""

    def handle(route: Route) -> None:
        response = route.fetch()
        frames = [f for f in response.body().split(b"\n\n") if f.strip()]
        assert frames[0].startswith(b"event: start"), frames[0]
        deltas = [f for f in frames if f.startswith(b"event: delta")][:2]
        if ending == "done":
            _, done = parsed(next(f for f in frames if f.startswith(b"event: done")))
            _, first = parsed(frames[0])
            text = "".join(parsed(f)[1]["text"] for f in deltas)
            message = {
                **first["message"],
                **done["message"],
                "content": text,
                "html": f"<p>{text.strip()}</p>",
                "status": "cut",
                "finish_reason": "shutdown",
            }
            last = sse("done", {"message": message, "ask_verdict": False})
        else:
            last = sse("error", SHUTTING_DOWN)
        body = b"\n\n".join([frames[0], *deltas, last]) + b"\n\n"
        route.fulfill(response=response, body=body)

    return handle


@pytest.mark.parametrize("ending", ["done", "error"])
def test_an_answer_cut_by_a_stopping_server_says_interrupted_and_retry_regenerates(
    tab: Tab, ending: str
) -> None:
    page = tab.page
    page.route("**/api/chat", cut_by_shutdown(ending))
    tab.send("please repeat these seven words back")
    answer = tab.answers().last
    note = answer.get_by_test_id("message-note")
    expect(note).to_have_text("Interrupted")
    expect(answer).to_have_attribute("data-status", "cut")
    expect(answer.locator(BODY)).to_contain_text("You said")
    expect(answer.get_by_test_id("retry")).to_be_enabled()
    expect(answer.get_by_test_id("regenerate")).to_have_count(0)  # Retry is the one way
    expect(page.get_by_test_id("send")).to_be_visible()

    page.unroute("**/api/chat")
    tab.retry_completes(answer, "please repeat these seven words back")


def test_after_a_reload_a_stored_shutdown_cut_says_interrupted_and_a_stop_says_stopped(
    tab: Tab,
) -> None:
    """The stored message tells the two apart: a shutdown stores finish_reason "shutdown" (a
    crash found at the next start, "interrupted"); an answer the person stopped, "cancelled"."""
    page = tab.page
    tab.echo("first")
    tab.echo("second")
    conversation_id = tab.conversation_id()
    answer_ids = [tab.answers().nth(i).get_attribute("data-id") for i in range(2)]

    def stored_as_cut(route: Route) -> None:
        response = route.fetch()
        tree = response.json()
        reasons = dict(zip(answer_ids, ["shutdown", "cancelled"], strict=True))
        for m in tree["messages"]:
            if m["id"] in reasons:
                m["status"], m["finish_reason"] = "cut", reasons[m["id"]]
        route.fulfill(response=response, json=tree)

    page.route(f"**/api/conversations/{conversation_id}", stored_as_cut)
    tab.reload()
    first, second = tab.answers().nth(0), tab.answers().nth(1)
    expect(first).to_have_attribute("data-status", "cut")
    expect(first.get_by_test_id("message-note")).to_have_text("Interrupted")
    expect(first.get_by_test_id("retry")).to_be_enabled()
    expect(first.get_by_test_id("regenerate")).to_have_count(0)
    expect(second).to_have_attribute("data-status", "cut")
    expect(second.get_by_test_id("message-note")).to_have_text("Stopped")
    expect(second.get_by_test_id("retry")).to_have_count(0)
    expect(second.get_by_test_id("regenerate")).to_be_enabled()


# 2. The operator console on a phone ------------------------------------------------------------


@pytest.mark.parametrize("section", CONSOLE_SECTIONS)
def test_the_operator_console_fits_a_390_px_phone(tabs: Tabs, admin: Person, section: str) -> None:
    tab = tabs.open(viewport=PHONE_390)
    tab.login(admin)
    response = tab.goto("/admin" if section == "dashboard" else f"/admin/{section}")
    assert response is not None and response.status == 200
    page = tab.page
    expect(page.get_by_test_id(f"nav-{section}")).to_have_attribute("aria-current", "page")
    page.wait_for_function("document.readyState === 'complete'")
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{widths[0]} px of content in a {widths[1]} px window"
    # Everything in the header can be reached: Back to chat in view, every tab by scrolling
    # the tab bar (not the page).
    back = page.get_by_test_id("nav-chat")
    expect(back).to_be_in_viewport(ratio=1)
    for key in CONSOLE_SECTIONS:
        link = page.get_by_test_id(f"nav-{key}")
        link.scroll_into_view_if_needed()
        expect(link).to_be_in_viewport(ratio=1)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("window.scrollX") == 0
    tab.screenshot(f"console-phone-{section}.png")


# 3. Renaming a chat with Enter ------------------------------------------------------------------


def test_renaming_a_chat_with_enter_leaves_the_focus_on_its_rename_button(tab: Tab) -> None:
    page = tab.page
    tab.echo("a chat to rename")
    conversation_id = tab.conversation_id()
    item = page.locator(f'[data-testid="conversation-item"][data-id="{conversation_id}"]')
    item.get_by_test_id("rename").click()
    field = item.get_by_test_id("rename-input")
    expect(field).to_be_focused()
    field.fill("Renamed by keyboard")

    def saved_title(route: Route) -> None:
        """The server's answer names the title it saved; this one says so in a way the page can
        only show once it has drawn the sidebar from that answer."""
        response = route.fetch()
        saved = response.json()
        if route.request.method == "PATCH" and "title" in (route.request.post_data or ""):
            saved["title"] += " (saved)"
        route.fulfill(response=response, json=saved)

    page.route(f"**/api/conversations/{conversation_id}", saved_title)
    field.press("Enter")
    expect(item.get_by_test_id("conversation-title")).to_have_text("Renamed by keyboard (saved)")
    expect(item.get_by_test_id("rename")).to_be_focused()
    # ... and the keyboard goes on from there.
    page.keyboard.press("Enter")
    expect(item.get_by_test_id("rename-input")).to_be_focused()
    page.keyboard.press("Escape")
    expect(item.get_by_test_id("rename")).to_be_focused()


# 4. What is left of the plan ---------------------------------------------------------------------


def test_the_requests_this_minute_read_as_what_is_left(tabs: Tabs, server: LiveServer) -> None:
    """It read "0/60 requests this minute", as if none were used when none were left."""
    tab = tabs.open()
    tab.login(new_person(server, plan="plus"))  # 60 requests a minute
    tab.pick_model(SCRIPTED)
    limits = tab.page.get_by_test_id("limits")
    expect(limits).to_contain_text("60 of 60 requests left this minute")
    tab.send("count me")
    tab.answer_done()
    expect(limits).to_contain_text("59 of 60 requests left this minute")


# 5. A live API key in a message ------------------------------------------------------------------


def test_a_pasted_api_key_is_warned_about_above_the_answer_and_another_accounts_is_revoked(
    tab: Tab, server: LiveServer, person: Person
) -> None:
    """The server finds it (and revokes another account's key at once); the page said nothing."""
    own = server.call(lambda s: s.accounts.create_key(person.email, "pasted by mistake")).secret
    answer = tab.echo(f"why does {own} not work?")
    warning = answer.get_by_test_id("message-warning")
    expect(warning).to_contain_text("Your message contains a live API key.")
    expect(warning).to_contain_text("appears in the messages; rotate it.")
    # Above the answer, not lost under it.
    assert warning.bounding_box()["y"] < answer.locator(BODY).bounding_box()["y"]  # type: ignore[index]

    _, theirs = server.new_user(plan="roomy")
    answer = tab.echo(f"I found {theirs} on a bus")
    # (The earlier message, with the person's own key, is in the conversation still.)
    expect(answer.get_by_test_id("message-warning")).to_contain_text(
        "of another account was revoked"
    )
    with pytest.raises(openai.AuthenticationError):
        server.client(theirs).models.list()
    expect(tab.answers().first.get_by_test_id("message-warning")).to_contain_text("rotate it")
