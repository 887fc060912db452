"""Details of the chat page that a browser audit found wanting, in a real Chromium against the
real server: right-to-left text reads right to left; an answer still being written when the
chat is opened says so until it is finished; the sidebar shows every chat, a page at a time;
the keyboard's focus stays on something when the control that had it goes; the delete dialog's
full stop comes once; screen readers hear the limits only when one runs out or comes back.
"""

from __future__ import annotations

from playwright.sync_api import Route, expect

from tests.conftest import SCRIPTED, LiveServer
from tests.web.browser import BODY, PHONE, Tab, Tabs
from tests.web.conftest import Browserless, Person, add_chats, limited_tab

expect.set_options(timeout=15_000)


# Right-to-left text -----------------------------------------------------------------------------

HEBREW = "שלום, מה שלומך היום?"


def test_right_to_left_text_reads_right_to_left_where_people_write_and_read_it(tab: Tab) -> None:
    tab.composer.fill(HEBREW)
    expect(tab.composer).to_have_css("direction", "rtl")
    answer = tab.echo(HEBREW)
    question = tab.questions().last
    expect(question.locator(BODY)).to_have_text(HEBREW)
    expect(question.locator(BODY)).to_have_css("direction", "rtl")
    expect(answer.locator(BODY)).to_have_css("direction", "ltr")  # "You said: …" starts in English
    expect(tab.sidebar_titles().first).to_have_text(HEBREW)
    expect(tab.sidebar_titles().first).to_have_css("direction", "rtl")
    title = tab.page.locator("#topbar-title")
    expect(title).to_have_text(HEBREW)
    expect(title).to_have_css("direction", "rtl")
    tab.composer.fill("And English again")
    expect(tab.composer).to_have_css("direction", "ltr")


# An answer still being written when the chat is opened -----------------------------------------


def test_an_answer_still_being_written_after_a_reload_shows_so_until_it_settles(
    tab: Tab,
) -> None:
    """The page was reloaded while an answer streamed: the server still has it in progress.
    The page says it is being written, offers nothing to rate or regenerate, and reads the
    chat again, less and less often, until it is finished; then it stops asking."""
    page = tab.page
    tab.echo("first question")
    answer = tab.echo("second question")
    conversation = tab.conversation_id()
    answer_id = answer.get_attribute("data-id")
    reads: list[str] = []
    unfinished = {"reads": 2}  # how many reads find the answer still in progress

    def tree(route: Route) -> None:
        reads.append(route.request.url)
        response = route.fetch()
        body = response.json()
        if len(reads) <= unfinished["reads"]:
            for m in body["messages"]:
                if m["id"] == answer_id:
                    m.update(status="in_progress", content="You said", html="<p>You said</p>")
        route.fulfill(response=response, json=body)

    def run_minutes(minutes: int) -> None:
        """Move the page's clock on a minute at a time; after each minute, a request of our
        own goes to the server and back, so that a read the page began has been answered."""
        for _ in range(minutes):
            page.clock.run_for(60_000)
            assert page.evaluate("fetch('/api/me').then((r) => r.status)") == 200

    page.route(f"**/api/conversations/{conversation}", tree)
    page.clock.install()
    tab.reload()
    answer, first = tab.answers().last, tab.answers().first
    expect(answer).to_have_attribute("data-status", "in_progress")
    expect(answer).to_have_attribute("aria-busy", "true")
    expect(answer.get_by_test_id("still-writing")).to_have_text("Still being written…")
    expect(answer.get_by_test_id("thumbs-up")).to_have_count(0)
    expect(answer.get_by_test_id("regenerate")).to_have_count(0)
    expect(first.get_by_test_id("thumbs-up")).to_be_visible()  # the finished one is as before

    with page.expect_request(f"**/api/conversations/{conversation}"):
        page.clock.run_for(1_000)  # the first re-read: still in progress
    expect(answer.get_by_test_id("still-writing")).to_be_visible()
    with page.expect_request(f"**/api/conversations/{conversation}"):
        page.clock.run_for(2_000)  # the next, a little later: finished
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(BODY)).to_have_text("You said: second question")
    expect(answer.get_by_test_id("still-writing")).to_have_count(0)
    expect(answer.get_by_test_id("thumbs-up")).to_be_visible()
    expect(answer.get_by_test_id("regenerate")).to_be_enabled()
    run_minutes(5)
    assert len(reads) == 3, reads  # settled: no more reads

    # One that never settles is read a bounded number of times, and not after leaving.
    unfinished["reads"] = 1_000
    reads.clear()
    tab.reload()
    expect(answer.get_by_test_id("still-writing")).to_be_visible()
    run_minutes(25)
    assert 5 < len(reads) <= 12, reads  # it gave up, after a few minutes
    expect(answer.get_by_test_id("still-writing")).to_be_visible()
    reads.clear()
    tab.reload()
    expect(answer.get_by_test_id("still-writing")).to_be_visible()
    page.get_by_test_id("new-chat").click()
    expect(tab.answers()).to_have_count(0)
    run_minutes(3)
    assert len(reads) == 1, reads  # only the read that opened it


# More chats than one page of the sidebar -------------------------------------------------------


def test_the_sidebar_shows_every_chat_a_page_at_a_time(
    tabs: Tabs, server: LiveServer, person: Person
) -> None:
    titles = add_chats(server, person, 205)
    tab = tabs.open()
    tab.login(person)
    shown = tab.sidebar_titles()
    more = tab.page.get_by_test_id("show-more-chats")
    expect(shown).to_have_count(100)
    expect(shown.last).to_have_text(titles[99])
    # Meanwhile another tab answers in a chat of the second page: it moves to the top, above
    # the page this tab has, and shifts none of the chats below it.
    other = Browserless(server.base_url)
    other.login(person)
    found = other.api("GET", "/conversations", params={"q": "Chat 150"}).json()["data"]
    other.chat(conversation_id=found[0]["id"], content="meanwhile")
    other.close()
    more.focus()
    tab.page.keyboard.press("Enter")
    expect(shown).to_have_count(200)
    expect(shown.nth(100)).to_have_text(titles[100])
    # The focus goes on to the first chat that appeared, for the keyboard to carry on from.
    expect(tab.page.locator(".conv-link").nth(100)).to_be_focused()
    more.click()
    expect(shown).to_have_count(204)
    expect(more).to_have_count(0)  # that was all
    expect(shown).to_have_text([title for title in titles if title != "Chat 150"])
    # Sending a message keeps every page open, the new chat on top, the one answered in the
    # other tab under it.
    tab.pick_model(SCRIPTED)
    tab.echo("one more")
    expect(shown).to_have_count(205)
    expect(shown.first).to_have_text("one more")
    expect(shown.nth(1)).to_have_text("Chat 150")


# Keyboard focus after the control that had it goes away ------------------------------------------


def test_the_focus_stays_somewhere_sensible_when_the_pressed_control_goes(
    tab: Tab, tabs: Tabs, person: Person
) -> None:
    page = tab.page
    # Send, reached with Tab: it hides while the answer is written; the message box has the focus.
    tab.composer.fill("first question")
    tab.composer.focus()
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("send")).to_be_focused()
    page.keyboard.press("Enter")
    answer = tab.answer_done()
    expect(tab.composer).to_be_focused()

    # Regenerate: the new answer replaces the button.
    answer.get_by_test_id("regenerate").focus()
    page.keyboard.press("Enter")
    expect(answer.get_by_test_id("branch-label")).to_have_text("2 / 2")
    tab.answer_done()
    expect(tab.composer).to_be_focused()

    # Sending an edited message with its Send button.
    question = tab.questions().last
    question.get_by_test_id("edit").click()
    question.get_by_test_id("edit-input").fill("first question, edited")
    question.get_by_test_id("edit-save").focus()
    page.keyboard.press("Enter")
    expect(tab.answers().last.locator(BODY)).to_have_text("You said: first question, edited")
    tab.answer_done()
    expect(tab.composer).to_be_focused()

    # On a phone, a chat opened from the sidebar: its title has the focus, as the sidebar folds.
    phone = tabs.open(viewport=PHONE)
    phone.login(person)
    phone.page.get_by_test_id("menu").click()
    expect(phone.page.get_by_test_id("new-chat")).to_be_focused()
    phone.page.locator(".conv-link").first.focus()
    phone.page.keyboard.press("Enter")
    expect(phone.page.locator("#topbar-title")).to_have_text("first question")
    expect(phone.page.locator("#topbar-title")).to_be_focused()


# Small things: the delete dialog's full stop, limits read out when they change --------------------


def test_the_delete_dialog_ends_a_title_that_has_its_own_full_stop_once(
    tabs: Tabs, server: LiveServer, person: Person
) -> None:
    add_chats(server, person, 2)
    tab = tabs.open()
    tab.login(person)
    items = tab.page.get_by_test_id("conversation-item")
    dialog = tab.page.get_by_test_id("confirm-delete")
    items.first.get_by_test_id("rename").click()
    tab.page.get_by_test_id("rename-input").fill("Notes, part 1.")
    tab.page.keyboard.press("Enter")
    expect(tab.sidebar_titles().first).to_have_text("Notes, part 1.")
    for title in ("Notes, part 1.", "Chat 001"):
        items.filter(has_text=title).get_by_test_id("delete").click()
        expect(dialog.locator("#confirm-desc")).to_have_text(
            f"This will permanently delete {title.removesuffix('.')}."
        )
        tab.page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()


def test_screen_readers_hear_a_limit_run_out_and_come_back_not_every_answer(
    tabs: Tabs, server: LiveServer
) -> None:
    tab = limited_tab(tabs, server, requests_per_minute=2)
    page = tab.page
    limits, announcer = page.get_by_test_id("limits"), page.locator("#announcer")
    assert limits.get_attribute("aria-live") is None  # read again after every answer
    tab.echo("the first of two")
    expect(limits).to_contain_text("1 of 2 requests left this minute")
    page.clock.run_for(100)
    expect(announcer).not_to_contain_text("left")
    tab.echo("the second of two")
    expect(limits).to_contain_text("0 of 2 requests left this minute")
    page.clock.run_for(100)
    expect(announcer).to_have_text("You have no requests left this minute.")

    def a_minute_later(route: Route) -> None:  # the server's minute, not the page's clock
        response = route.fetch()
        me = response.json()
        me["limits"]["requests_per_minute"]["remaining"] = 2
        route.fulfill(response=response, json=me)

    page.route("**/api/me", a_minute_later)
    page.get_by_test_id("thumbs-up").last.click()  # a rating reads the limits again
    expect(limits).to_contain_text("2 of 2 requests left this minute")
    page.clock.run_for(100)
    expect(announcer).to_have_text("You can send messages again")
