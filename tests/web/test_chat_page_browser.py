"""The chat page as a person uses it, in a real Chromium against the real server: a
failed answer in plain words with only Retry, a second tab that neither goes stale nor forks
the chat, the model picker following the chat opened, streamed words that keep their spaces,
text contrast, a scroll up that holds while an answer streams, and the sidebar (titles with the
row's whole width, buttons named after their chat, Settings and the operator console).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from tests.conftest import FAILING, PACED, SCRIPTED, LiveServer
from tests.web.browser import BODY, Tab, Tabs, eventually
from tests.web.conftest import Browserless, Person, add_chats, admin_person

expect.set_options(timeout=15_000)

ANSWER_FAILED = "Something went wrong while generating the response."


def sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def answer_json(conversation_id: str, parent_id: str | None, **fields: Any) -> dict[str, Any]:
    """An answer as /api/chat's events carry it (made up, with an id of its own)."""
    return {
        "id": str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "parent_id": parent_id,
        "role": "assistant",
        "content": "",
        "html": "",
        "status": "in_progress",
        "finish_reason": None,
        "model": SCRIPTED,
        "author": None,
        "created_at": "2030-01-01T00:00:00+00:00",
        "rating": None,
        **fields,
    }


def made_up_stream(tab: Tab, conversation_id: str, parent_id: str, *events: str) -> Any:
    """A route handler answering /api/chat with ``start`` (a made-up question and answer under
    ``parent_id``) then ``events`` (each built by sse with the answer's id given as {id})."""

    def handle(route: Route) -> None:
        question = {
            "id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "parent_id": parent_id,
            "role": "user",
            "content": json.loads(route.request.post_data or "{}").get("content"),
            "status": "complete",
            "created_at": "2030-01-01T00:00:00+00:00",
        }
        answer = answer_json(conversation_id, question["id"])
        start = {
            "conversation_id": conversation_id,
            "title": "made up",
            "user_message": question,
            "message": answer,
            "side_by_side": False,
            "warning": None,
        }
        body = sse("start", start) + "".join(e.replace("{id}", answer["id"]) for e in events)
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    return handle


# 1. A failed answer ------------------------------------------------------------------------------


def test_a_failed_answer_says_so_once_in_plain_words_and_offers_only_retry(
    tabs: Tabs, tab: Tab
) -> None:
    """It showed the backend's raw error twice (a banner and the answer), named backends, and
    offered thumbs and "Improve this answer" on the failed answer."""
    page = tab.page
    banner = page.get_by_test_id("error-banner")
    tab.pick_model(FAILING)  # fails after three words
    tab.send("one two three four five six seven")
    answer = tab.answers().last
    expect(answer).to_have_attribute("data-status", "error")
    expect(answer.get_by_test_id("message-note")).to_have_text(ANSWER_FAILED)
    details = answer.get_by_test_id("note-detail")
    expect(details).not_to_have_attribute("open", re.compile(".*"))  # folded
    expect(details.locator("summary")).to_have_text("Details")
    expect(details).to_contain_text("The scripted backend failed on purpose.")
    expect(page.get_by_text("failed on purpose")).to_have_count(1)  # said once
    expect(banner).to_be_hidden()
    for action in ("thumbs-up", "thumbs-down", "improve", "regenerate"):
        expect(answer.get_by_test_id(action)).to_have_count(0)
    expect(answer.get_by_test_id("retry")).to_be_enabled()
    tab.reload()  # the stored answer says the same
    answer = tab.answers().last
    expect(answer.get_by_test_id("message-note")).to_have_text(ANSWER_FAILED)
    expect(answer.get_by_test_id("thumbs-up")).to_have_count(0)

    # An upstream that answered 500 before the first word: an empty answer, the same words.
    tab.pick_model(SCRIPTED)
    conversation_id = tab.conversation_id()
    question_id = tab.questions().last.get_attribute("data-id")
    assert question_id
    upstream = (
        'Backend \'mock\' answered 500: {"error":{"message":"boom"}} '
        "No backend for 'mock-a' is available now: mock (tried). Try again shortly."
    )
    failed = {"error": {"message": upstream, "type": "server_error", "code": None}}
    # The page records the branch shown, ending in the made-up answer: the server has none.
    tabs.expect_console_error(r"/api/conversations/.* 404")
    page.route(
        "**/api/chat", made_up_stream(tab, conversation_id, question_id, sse("error", failed))
    )
    tab.send("and again")
    answer = tab.answers().last
    expect(answer.get_by_test_id("message-note")).to_have_text(ANSWER_FAILED)
    expect(answer.locator(BODY)).to_have_text("")
    expect(page.get_by_text("mock-a", exact=False)).to_have_count(1)  # under Details only
    expect(answer.get_by_test_id("note-detail").locator("span")).to_be_hidden()
    expect(banner).to_be_hidden()
    for action in ("thumbs-up", "thumbs-down", "improve", "copy-message"):
        expect(answer.get_by_test_id(action)).to_have_count(0)
    expect(answer.get_by_test_id("retry")).to_be_enabled()

    # Refused before any answer began (a 500 of /api/chat): the banner, in the same words.
    page.unroute("**/api/chat")
    tabs.expect_console_error(r"status of 500")
    page.route("**/api/chat", lambda route: route.fulfill(status=500, json=failed))
    tab.send("once more")
    expect(banner).to_contain_text(ANSWER_FAILED)
    expect(banner.get_by_test_id("error-detail")).to_contain_text("mock-a")
    expect(banner.get_by_test_id("error-detail")).not_to_have_attribute("open", re.compile(".*"))


# 2. A second tab ---------------------------------------------------------------------------------


def looked_at_again(page: Page) -> None:
    """Bring a tab to the front as a person does. Headless Chromium keeps every tab visible and
    sends no event when one is brought to the front, so the event a real switch of tabs sends
    is sent here."""
    page.bring_to_front()
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")


def test_a_second_tab_catches_up_when_looked_at_again_and_never_forks_the_chat(
    tab: Tab, web: Browserless
) -> None:
    """Tab B showed the chat as it was when opened: it did not update when brought back, and a
    message sent from it went under the old last answer, the other tab's exchange hidden on a
    branch of its own."""
    tab.echo("first question")
    conversation_id = tab.conversation_id()
    other = Tab(tab.context.new_page(), tab.base_url)  # the same browser, another tab
    other.goto(f"/c/{conversation_id}")
    other.ready()
    expect(other.answers()).to_have_count(1)

    tab.page.bring_to_front()
    tab.echo("second question, from tab A")
    looked_at_again(other.page)  # back to tab B: it shows what A did
    expect(other.answers()).to_have_count(2)
    expect(other.answers().last.locator(BODY)).to_have_text("You said: second question, from tab A")

    # Another app goes on meanwhile; B, not looked away from, sends: it is shown first.
    last = web.tree(conversation_id)["current_leaf_id"]
    done = [p for e, p in web.chat(conversation_id=conversation_id, parent_id=last, content="third")
            if e == "done"]  # fmt: skip
    third_answer = done[0]["message"]["id"]
    other.send("a question from tab B")
    banner = other.page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("continued in another tab or app")
    expect(other.answers()).to_have_count(3)
    expect(other.answers().last.locator(BODY)).to_have_text("You said: third")
    expect(other.composer).to_have_value("a question from tab B")  # not lost, not sent
    other.composer.press("Enter")
    answer = other.answer_done()
    expect(answer.locator(BODY)).to_have_text("You said: a question from tab B")
    expect(banner).to_be_hidden()
    tree = web.tree(conversation_id)
    [asked] = [m for m in tree["messages"] if m["content"] == "a question from tab B"]
    assert asked["parent_id"] == third_answer  # the thread goes on: no fork


# 3. The model picker -----------------------------------------------------------------------------


def test_opening_a_chat_sets_the_model_picker_to_the_model_of_its_last_answer(tab: Tab) -> None:
    """The picker kept whatever it was on, so a follow-up went to another model silently."""
    picker = tab.page.locator("#model-select")
    tab.echo("answered by scripted-echo")
    conversation_id = tab.conversation_id()
    tab.page.get_by_test_id("new-chat").click()
    tab.pick_model(PACED)  # chosen for new chats, and remembered
    tab.reload()
    expect(picker).to_have_value(PACED)
    tab.page.locator(f'[data-testid="conversation-item"][data-id="{conversation_id}"] a').click()
    expect(tab.answers()).to_have_count(1)
    expect(picker).to_have_value(SCRIPTED)
    answer = tab.echo("and a follow-up")
    expect(answer.locator(".msg-model")).to_have_text(SCRIPTED)
    tab.goto(f"/c/{conversation_id}")  # opened by its address, too
    tab.ready()
    expect(tab.answers()).to_have_count(2)
    expect(picker).to_have_value(SCRIPTED)


# 4. Streamed text --------------------------------------------------------------------------------


def test_streamed_words_keep_the_space_that_the_rendering_trims(tab: Tab) -> None:
    """The server's rendering of "lorem " is <p>lorem</p>: the next word ran into it
    ("loremipsum") until the rendering after it."""
    tab.echo("a chat to stream into")
    conversation_id = tab.conversation_id()
    parent = tab.answers().last.get_attribute("data-id")
    assert parent
    events = [
        sse("delta", {"text": "lorem "}),
        sse("html", {"html": "<p>lorem</p>"}),
        sse("delta", {"text": "ipsum"}),
        sse("delta", {"text": " dolor "}),
        sse("html", {"html": "<p>lorem ipsum dolor</p>"}),
        sse("delta", {"text": "sit"}),
    ]  # and then the connection drops: what arrived stays, drawn as it was
    tab.page.route("**/api/chat", made_up_stream(tab, conversation_id, parent, *events))
    tab.send("stream please")
    answer = tab.answers().last
    expect(answer.get_by_test_id("message-note")).to_have_text("Connection lost")
    expect(answer.locator(BODY)).to_have_text("lorem ipsum dolor sit")


# 6. Contrast -------------------------------------------------------------------------------------

# The contrast of an element's text (or its placeholder) against what is behind it, as WCAG
# computes it: the backgrounds of the element and its ancestors composited down to the page.
CONTRAST = """([selector, pseudo]) => {
    const el = document.querySelector(selector);
    const rgba = (c) => {
        const p = c.match(/[\\d.]+/g).map(Number);
        return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    };
    const over = (top, below) =>
        top.slice(0, 3).map((v, i) => v * top[3] + below[i] * (1 - top[3]));
    const layers = [];
    for (let at = el; at; at = at.parentElement) {
        const bg = rgba(getComputedStyle(at).backgroundColor);
        if (bg[3] > 0) layers.push(bg);
        if (bg[3] === 1) break;
    }
    const dark = matchMedia('(prefers-color-scheme: dark)').matches;
    let bg = dark ? [0, 0, 0] : [255, 255, 255];  // the canvas, under everything
    for (const layer of layers.reverse()) bg = over(layer, bg);
    const fg = over(rgba(getComputedStyle(el, pseudo).color), bg);
    const lum = (c) => {
        const [r, g, b] = c.map((v) => {
            const s = v / 255;
            return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);
}"""
FAINT_TEXT = {
    "the hint under the message box": (".composer-hint", None),
    "the model's name under an answer": (".msg-model", None),
    "the message box's placeholder": ("#composer-input", "::placeholder"),
    "a day's label in the sidebar": (".conv-group", None),
    "the search's placeholder": ('[data-testid="search"]', "::placeholder"),
}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_faint_text_has_aa_contrast_in_both_colour_schemes(
    tabs: Tabs, person: Person, scheme: str
) -> None:
    """Light: 3.23:1 (hint, model name, placeholder), 3.07:1 (day label, search); dark: the
    message box's placeholder 3.82:1. WCAG AA asks 4.5:1 of text this size."""
    tab = tabs.open(color_scheme=scheme)  # type: ignore[arg-type]
    tab.login(person)
    tab.pick_model(SCRIPTED)
    tab.echo("a chat with an answer")
    expect(tab.page.locator(".conv-group").first).to_have_text("Today")
    ratios = {
        what: round(tab.page.evaluate(CONTRAST, list(where)), 2)
        for what, where in FAINT_TEXT.items()
    }
    assert all(ratio >= 4.5 for ratio in ratios.values()), ratios


# 7, 9, 13. The sidebar ---------------------------------------------------------------------------


def test_sidebar_titles_have_the_whole_row_and_its_buttons_name_their_chat(
    tabs: Tabs, tab: Tab, server: LiveServer, person: Person, web: Browserless
) -> None:
    """Rename and Delete, invisible, took 60 px of every row, and a hundred buttons were all
    called "Rename" and "Delete". The account menu had no way to Settings."""
    page = tab.page
    titles = add_chats(server, person, 3)
    long_title = "A rather long title for a chat about lighthouses and their keepers " * 2
    tab.echo("a chat with a long title")
    conversation_id = tab.conversation_id()
    assert web.api(
        "PATCH", f"/conversations/{conversation_id}", json={"title": long_title}
    ).is_success
    tab.reload()
    page.mouse.move(900, 400)  # nowhere near the sidebar
    item = page.locator(f'[data-testid="conversation-item"][data-id="{conversation_id}"]')
    row, title = item.bounding_box(), item.get_by_test_id("conversation-title").bounding_box()
    assert row and title
    assert title["x"] + title["width"] >= row["x"] + row["width"] - 12, (row, title)
    rename, actions = item.get_by_test_id("rename"), item.locator(".conv-actions")
    expect(actions).to_have_css("opacity", "0")
    item.hover()  # over the end of the title
    expect(actions).to_have_css("opacity", "1")
    box = rename.bounding_box()
    assert box and row["x"] < box["x"] and box["x"] + box["width"] <= row["x"] + row["width"]
    page.mouse.move(900, 400)
    expect(actions).to_have_css("opacity", "0")
    rename.focus()  # the keyboard finds them too
    expect(actions).to_have_css("opacity", "1")

    for name in titles:
        expect(page.get_by_role("button", name=f"Rename {name}", exact=True)).to_have_count(1)
        expect(page.get_by_role("button", name=f"Delete {name}", exact=True)).to_have_count(1)
    expect(page.get_by_role("button", name="Rename", exact=True)).to_have_count(0)

    settings = page.get_by_test_id("settings-link")
    expect(settings).to_have_text("Settings")
    expect(settings).to_have_attribute("href", "/settings")
    expect(page.get_by_test_id("admin-link")).to_have_count(0)  # not an admin
    admin = tabs.open()
    admin.login(admin_person(server))
    expect(admin.page.get_by_test_id("admin-link")).to_have_attribute("href", "/admin")
    expect(admin.page.get_by_test_id("admin-link")).to_have_text("Operator console")


# 8. Scrolling while an answer streams ------------------------------------------------------------


def test_a_small_scroll_up_while_an_answer_streams_stops_following_it(tab: Tab) -> None:
    """A wheel's notch (60 px) up snapped back to the bottom at the next word: anything closer
    than 80 px counted as being at the bottom."""
    page = tab.page
    thread = page.locator("#thread")
    # A word every 2 ms: 1,200 words take 2.4 s at least. Four words a line: typing (Playwright's
    # fill) takes time in proportion to the square of the lines (1,500 lines took 5 s).
    tab.pick_model(PACED)
    tab.send("four words a line\n" * 300)
    answer = tab.answers().last
    expect(answer.locator(BODY)).not_to_be_empty()
    expect(answer).to_have_attribute("data-status", "in_progress")
    distance = "(t) => t.scrollHeight - t.scrollTop - t.clientHeight"
    eventually(lambda: thread.evaluate(distance) < 2, what="the thread following the answer")
    box = thread.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -60)
    eventually(lambda: thread.evaluate(distance) >= 40, what="the wheel's scroll")
    held = thread.evaluate("(t) => t.scrollTop")
    expect(answer).to_have_attribute("data-status", "in_progress")  # still being written
    tab.answer_done(timeout=60_000)
    assert abs(thread.evaluate("(t) => t.scrollTop") - held) < 2  # where the person left it
    assert thread.evaluate(distance) > 200
    down = page.locator("#scroll-down")
    expect(down).to_be_visible()
    down.click()
    eventually(lambda: thread.evaluate(distance) < 2, what="the end of the thread")
    expect(down).to_be_hidden()
