"""In a real Chromium against the real server: a refusal for the plan's limits reads in a
person's words and counts down to when a message can be sent again (on the page's clock, moved
on by Playwright rather than waited for), and Regenerate, Retry and an edit's Send wait for it
too; a chat too long for the model and a message over the server's length limit say so plainly
(the limit before sending); and what is typed but not sent is kept per chat across chats,
reloads and sends, and never shown to the next account on the same browser.
"""

from __future__ import annotations

import re

from playwright.sync_api import Route, expect

from tests.conftest import MODEL, SCRIPTED, LiveServer
from tests.test_traffic_api import Holder
from tests.web.browser import BODY, Tab, Tabs
from tests.web.conftest import Browserless, limited_tab, new_person
from tests.web.test_connection_browser import sidebar_link
from tests.web.test_small_fixes_browser import cut_by_shutdown

expect.set_options(timeout=15_000)

WAIT = re.compile(r"^You can send again in (\d+) s\.$")


def kept_in_storage(tab: Tab) -> list[str]:
    """The drafts and unsent messages this browser keeps, of every account."""
    return list(
        tab.page.evaluate(
            "Object.keys(localStorage).filter((k) => /^lamplighter[.](draft|unsent)[.]/.test(k))"
        )
    )


def test_a_rate_limit_says_so_plainly_counts_down_and_then_goes(
    tabs: Tabs, server: LiveServer
) -> None:
    tab = limited_tab(tabs, server, requests_per_minute=1)
    page = tab.page
    limits = page.get_by_test_id("limits")
    tab.echo("the one message this minute")
    expect(limits).to_contain_text("0 of 1 request left this minute")

    tabs.expect_console_error(r"Failed to load resource: .* 429")
    tab.send("one too many")
    banner = page.get_by_test_id("error-banner")
    # Not the API's "Rate limit reached for requests per minute on plan '...': limit 1, used 1".
    expect(banner).to_contain_text(
        "You have sent as many messages this minute as your plan allows."
    )
    countdown = banner.get_by_test_id("wait")
    expect(countdown).to_have_text(WAIT)
    # Read out once: the ticking text is hidden from screen readers, a still one is not.
    expect(countdown).to_have_attribute("aria-hidden", "true")
    expect(banner.locator(".sr-only")).to_have_text(WAIT)
    expect(tab.composer).to_have_value("one too many")  # nothing typed is lost
    tab.screenshot("rate-limit-countdown.png")
    # Sending waits for the countdown: Send is disabled and Enter sends nothing.
    send = page.get_by_test_id("send")
    expect(send).to_be_disabled()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/chat") else None)
    tab.composer.press("Enter")
    expect(tab.composer).to_have_value("one too many")
    expect(countdown).to_have_text(WAIT)

    now_ms = page.evaluate("Date.now()")
    page.clock.pause_at((now_ms + 1_000) / 1_000)  # Python's clock takes seconds
    shown = WAIT.match(countdown.inner_text())
    assert shown, countdown.inner_text()
    left = int(shown.group(1))
    assert 1 < left <= 60, f"the wait for a 1-request-a-minute plan was {left} s"
    page.clock.run_for(1_000)
    expect(countdown).to_have_text(f"You can send again in {left - 1} s.")
    page.clock.run_for((left - 1) * 1_000)
    expect(banner).to_be_hidden()  # the moment has come: the banner goes by itself
    page.clock.run_for(100)  # the announcement is set a moment later, to be heard
    expect(page.locator("#announcer")).to_have_text("You can send messages again")
    expect(tab.composer).to_have_value("one too many")
    expect(send).to_be_enabled()
    assert sent == [], "Enter sent the message during the countdown"
    page.clock.resume()


def test_regenerate_retry_and_an_edits_send_wait_for_the_countdown_too(
    tabs: Tabs, server: LiveServer
) -> None:
    """Each would only be refused again, and each refusal counts toward a temporary ban."""
    tab = limited_tab(tabs, server, requests_per_minute=2)
    page = tab.page
    tab.echo("a whole answer")
    whole = tab.answers().first
    page.route("**/api/chat", cut_by_shutdown("done"))
    tab.send("an answer cut short")
    cut = tab.answers().last
    expect(cut.get_by_test_id("message-note")).to_have_text("Interrupted")
    page.unroute("**/api/chat")

    tabs.expect_console_error(r"Failed to load resource: .* 429")
    tab.send("one too many")
    countdown = page.get_by_test_id("error-banner").get_by_test_id("wait")
    expect(countdown).to_have_text(WAIT)
    regenerate, retry = whole.get_by_test_id("regenerate"), cut.get_by_test_id("retry")
    expect(regenerate).to_be_disabled()
    expect(retry).to_be_disabled()
    tab.questions().first.get_by_test_id("edit").click()  # editing is fine; sending it waits
    edit = page.get_by_test_id("edit-input")
    edit.fill("a changed question")
    edit_send = page.get_by_test_id("edit-save")
    expect(edit_send).to_be_disabled()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/chat") else None)
    edit.press("Enter")
    expect(edit).to_have_value("a changed question")

    now_ms = page.evaluate("Date.now()")
    page.clock.pause_at((now_ms + 1_000) / 1_000)
    shown = WAIT.match(countdown.inner_text())
    assert shown, countdown.inner_text()
    page.clock.run_for(int(shown.group(1)) * 1_000)
    expect(countdown).to_have_count(0)
    for button in (regenerate, retry, edit_send):
        expect(button).to_be_enabled()
    assert sent == [], "something was sent during the countdown"
    page.clock.resume()


def test_a_chat_too_long_for_the_model_says_so_plainly(tab: Tab, tabs: Tabs) -> None:
    tabs.expect_console_error(r"Failed to load resource: .* 400")
    page = tab.page
    tab.pick_model(MODEL)  # reads 2,048 tokens at a time
    tab.send("word " * 3_000)
    banner = page.get_by_test_id("error-banner")
    # Not "This model's maximum context length is 2048 tokens. However, your messages ...".
    expect(banner).to_contain_text("This chat is now too long for the model to read.")
    expect(banner).to_contain_text("It can read 2,048 tokens at a time")
    expect(banner).to_contain_text("Start a new chat, or shorten your message.")
    detail = banner.get_by_test_id("error-detail")
    expect(detail).to_contain_text("maximum context length is 2048 tokens")  # kept, folded
    expect(banner.get_by_test_id("wait")).to_have_count(0)


def test_a_message_over_the_length_limit_says_so_before_it_is_sent(
    tab: Tab, tabs: Tabs, web: Browserless
) -> None:
    page = tab.page
    send, too_long = page.get_by_test_id("send"), page.get_by_test_id("too-long")
    tab.composer.fill("a" * 100_001)
    expect(too_long).to_have_text(
        "Too long to send: 100,001 characters, and a message can have at most 100,000."
    )
    expect(send).to_be_disabled()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/chat") else None)
    tab.composer.press("Enter")
    expect(tab.composer).to_have_value("a" * 100_001)
    # Counted as the server counts: characters, not the two halves of an emoji.
    tab.composer.fill("\N{GRINNING FACE}" * 50_001)
    expect(too_long).to_be_hidden()
    expect(send).to_be_enabled()
    # The limit is the server's own: it takes 100,000 characters and refuses one more.
    tab.composer.fill("a" * 100_000)
    expect(too_long).to_be_hidden()
    assert sent == []
    tab.composer.press("Enter")
    expect(tab.answer_done().locator(BODY)).to_contain_text("You said: aaaa")
    refused = web.api("POST", "/chat", json={"content": "a" * 100_001, "model": SCRIPTED})
    assert refused.status_code == 400, refused.text

    # Should the server refuse one anyway (an edit, or a limit changed since the page loaded),
    # the refusal reads as plainly.
    tabs.expect_console_error(r"Failed to load resource: .* 400")
    page.route(
        "**/api/chat",
        lambda route: route.fulfill(status=400, json=refused.json()),
    )
    tab.send("a short one the server refuses here")
    banner = page.get_by_test_id("error-banner")
    # Not "Invalid value for 'content': String should have at most 100000 characters."
    expect(banner).to_contain_text(
        "Your message is too long to send: a message can have at most 100,000 characters."
    )
    expect(banner.get_by_test_id("error-detail")).to_contain_text("at most 100000 characters")


def test_an_unsent_message_is_kept_per_chat_across_reloads_until_it_is_sent(
    tabs: Tabs, server: LiveServer
) -> None:
    tab = tabs.open()
    page = tab.page
    tab.login(new_person(server))
    tab.pick_model(SCRIPTED)
    tab.echo("a first chat")
    first = tab.conversation_id()

    tab.composer.fill("half a thought for the first chat")
    page.get_by_test_id("new-chat").click()
    expect(tab.composer).to_have_value("")  # a new chat starts empty
    tab.composer.fill("an opening for a new chat")
    sidebar_link(page, first).click()
    expect(tab.composer).to_have_value("half a thought for the first chat")

    tab.reload()
    expect(tab.composer).to_have_value("half a thought for the first chat")
    page.get_by_test_id("new-chat").click()
    expect(tab.composer).to_have_value("an opening for a new chat")
    tab.reload()
    expect(tab.composer).to_have_value("an opening for a new chat")

    # Sending it is the end of that draft; the other chat's stays.
    tab.composer.press("Enter")
    answer = tab.answer_done()
    expect(answer).to_contain_text("You said: an opening for a new chat")
    expect(tab.composer).to_have_value("")
    page.get_by_test_id("new-chat").click()
    tab.reload()
    expect(tab.composer).to_have_value("")
    sidebar_link(page, first).click()
    expect(tab.composer).to_have_value("half a thought for the first chat")

    # Clearing the box forgets the draft.
    tab.composer.fill("")
    tab.reload()
    expect(tab.composer).to_have_value("")

    # Another account's drafts, left when its session ended without a logout, are removed
    # when the page starts; this account's stay.
    page.evaluate("localStorage.setItem('lamplighter.draft.someone-else.', 'their words')")
    tab.reload()
    assert kept_in_storage(tab) == []  # the first chat's draft was cleared above
    tab.composer.fill("mine")
    tab.reload()
    expect(tab.composer).to_have_value("mine")
    assert len(kept_in_storage(tab)) == 1

    # Logging out leaves no drafts behind for the next person on this browser.
    tab.composer.fill("private words")
    assert len(kept_in_storage(tab)) == 1
    page.get_by_test_id("logout").click()
    expect(page).to_have_url(re.compile(r"/login"))
    assert kept_in_storage(tab) == []
    tab.login(new_person(server))
    expect(tab.composer).to_have_value("")


def test_text_typed_while_a_new_chats_first_message_waits_is_that_chats_draft(
    tabs: Tabs, server: LiveServer
) -> None:
    """The page learns a new chat's id only when the server starts answering (after the queue):
    what was typed meanwhile must not stay behind as the next new chat's draft."""
    tab = tabs.open()
    page = tab.page
    tab.login(new_person(server))
    tab.pick_model(SCRIPTED)
    held: list[Route] = []

    def hold(route: Route) -> None:  # the request waits here, as in a full queue
        held.append(route)

    page.route("**/api/chat", hold)
    with page.expect_request("**/api/chat"):
        tab.send("the first message")
    tab.composer.fill("typed while it waited")
    for _ in range(100):  # the route's handler runs while Playwright is being called
        if held:
            break
        page.wait_for_timeout(20)
    held[0].continue_()
    page.unroute("**/api/chat")
    tab.answer_done()
    chat = tab.conversation_id()

    page.get_by_test_id("new-chat").click()
    expect(tab.composer).to_have_value("")  # not left behind for the next new chat
    tab.goto(f"/c/{chat}")
    tab.ready()
    expect(tab.composer).to_have_value("typed while it waited")


def test_a_message_waiting_for_a_free_place_says_so(tabs: Tabs, server: LiveServer) -> None:
    """With the model's one place taken, a message waits in the queue: the page says so, for as
    long as the queue takes."""
    tab = tabs.open()
    tab.login(new_person(server))  # the embedded model, on a plan that waits minutes
    with Holder(server, server.new_user(plan="roomy")[1]):
        tab.send("What is two and two?")
        note = tab.page.get_by_test_id("queue-note")
        expect(note).to_contain_text("Waiting for a free place")
    # The place is free: the answer starts and the note goes. The small model may ramble on for
    # minutes on a busy machine, so it is stopped once it has begun rather than awaited.
    answer = tab.answers().last
    expect(answer.locator(BODY)).not_to_have_text("", timeout=60_000)
    expect(note).to_be_hidden()
    tab.page.get_by_test_id("stop").click()
    expect(answer).to_have_attribute("data-status", "cut")
