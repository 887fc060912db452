"""What the accessibility audit found, in a real Chromium against the real server: the sidebar
keeps the chats in sight and every account control in reach at 200 % zoom, an answer
that ends without finishing (stopped, its connection lost, cut by a stopping server) says so to
screen readers, a limit's countdown read again gives the wait left, and the console's status
badges have AA contrast in the light scheme.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Route, ViewportSize, expect

from tests.conftest import PACED, LiveServer
from tests.web.browser import BODY, PHONE, Tab, Tabs
from tests.web.conftest import Person, add_chats, limited_tab, new_person
from tests.web.test_chat_page_browser import CONTRAST
from tests.web.test_connection_browser import REFUSED
from tests.web.test_console_browser import CONSOLE
from tests.web.test_small_fixes_browser import cut_by_shutdown

expect.set_options(timeout=15_000)


# 1. The sidebar at 200 % zoom and in short windows ---------------------------------------------

# A browser zoomed to 150 % or 200 % lays a page out in that many times fewer CSS pixels.
ZOOMS: dict[str, tuple[ViewportSize, float]] = {
    "1280x800 at 100 %": ({"width": 1280, "height": 800}, 1),
    "1280x800 at 150 %": ({"width": 853, "height": 533}, 1.5),
    "1440x900 at 200 %": ({"width": 720, "height": 450}, 2),
    "1280x800 at 200 %": ({"width": 640, "height": 400}, 2),
    "a phone": (PHONE, 2),
}
ACCOUNT_CONTROLS = ["consent", "billing-open", "settings-link", "logout", "logout-everywhere"]
# Chats whose whole row shows, in the list's visible part and in the window.
CHATS_IN_SIGHT = """() => {
    const list = document.querySelector('.conv-nav').getBoundingClientRect();
    const top = Math.max(list.top, 0), bottom = Math.min(list.bottom, innerHeight);
    return [...document.querySelectorAll('[data-testid="conversation-item"]')].filter((row) => {
        const r = row.getBoundingClientRect();
        return r.height > 0 && r.top >= top - 0.5 && r.bottom <= bottom + 0.5;
    }).length;
}"""
# Whether a click at the middle of the element would reach it (nothing covers it).
CLICKABLE = """(el) => {
    const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return !!hit && el.contains(hit);
}"""


@pytest.mark.parametrize("role", ["person", "admin"])
@pytest.mark.parametrize("zoom", list(ZOOMS))
def test_the_sidebar_keeps_chats_in_sight_and_every_account_control_in_reach(
    tabs: Tabs, server: LiveServer, request: pytest.FixtureRequest, zoom: str, role: str
) -> None:
    """At 200 % zoom of a 1280x800 window the list of chats had no room at all, and Log out
    everywhere (for an admin, Log out too) was cut off below the window: the sidebar did not
    scroll. At 150 % one chat or two showed."""
    who: Person = request.getfixturevalue(role)
    add_chats(server, who, 30)
    viewport, scale = ZOOMS[zoom]
    tab = tabs.open(viewport=viewport, device_scale_factor=scale)
    tab.login(who)
    page = tab.page
    expect(tab.sidebar_titles()).to_have_count(30)
    menu = page.get_by_test_id("menu")
    if menu.is_visible():
        menu.click()
    sidebar = page.locator("#sidebar")
    expect(page.get_by_test_id("new-chat")).to_be_in_viewport(ratio=1)
    assert page.evaluate(CHATS_IN_SIGHT) >= 3
    if zoom == "1280x800 at 100 %":  # room for everything: nothing to scroll
        assert sidebar.evaluate("(s) => s.scrollHeight <= s.clientHeight")
    # A mouse reaches every account control: the wheel over the sidebar brings it into view.
    brand = page.locator(".brand").bounding_box()
    assert brand
    page.mouse.move(brand["x"] + brand["width"] / 2, brand["y"] + brand["height"] / 2)
    page.mouse.wheel(0, 2_000)
    controls = ACCOUNT_CONTROLS + (["admin-link"] if role == "admin" else [])
    for testid in controls:
        control = page.get_by_test_id(testid)
        expect(control).to_be_in_viewport(ratio=1)
        assert control.evaluate(CLICKABLE), f"{testid} is covered"
    tab.screenshot(f"sidebar-{role}-{zoom.replace(' ', '-').replace('%', 'pc')}.png")


# 2. An answer that ends unfinished -------------------------------------------------------------

# A word every 2 ms: an echo of 1,500 words is written for 3 s at least.
LONG_ECHO = "word " * 1500


def streaming(tab: Tab, text: str) -> None:
    """Send ``text`` to scripted-paced and wait until its answer is being shown, word by word."""
    tab.pick_model(PACED)
    tab.send(text)
    answer = tab.answers().last
    expect(answer).to_have_attribute("data-status", "in_progress")
    expect(answer.locator(BODY)).not_to_be_empty()


def test_stopping_an_answer_with_escape_is_announced(tab: Tab) -> None:
    """The answer turned into "Stopped" on screen and a screen reader heard nothing, so a blind
    person could not tell whether Escape had worked."""
    tab.echo("a first answer, announced as complete")
    announcer = tab.page.locator("#announcer")
    expect(announcer).to_have_text("Answer complete")
    streaming(tab, f"stop me {LONG_ECHO}")
    tab.composer.press("Escape")
    expect(tab.answers().last.get_by_test_id("message-note")).to_have_text("Stopped")
    expect(announcer).to_have_text("Answer stopped")
    expect(tab.composer).to_be_focused()


def cut_short(route: Route) -> None:
    """Let the real request through, then hand the page only its start and first two deltas:
    the stream ends there, without an error and without done, as when the connection drops."""
    response = route.fetch()
    events = response.body().split(b"\n\n")
    assert events[0].startswith(b"event: start"), events[0]
    deltas = [e for e in events if e.startswith(b"event: delta")]
    route.fulfill(response=response, body=b"\n\n".join([events[0], *deltas[:2]]) + b"\n\n")


def test_a_connection_lost_mid_answer_is_announced(tab: Tab) -> None:
    tab.page.route("**/api/chat", cut_short)
    tab.send("please lose the rest of this answer")
    answer = tab.answers().last
    expect(answer.get_by_test_id("message-note")).to_have_text("Connection lost")
    expect(answer.locator(BODY)).to_have_text("You said:")  # what arrived stays
    expect(tab.page.locator("#announcer")).to_have_text(
        "Connection lost. The answer so far is kept; Retry is available."
    )
    expect(answer.get_by_test_id("retry")).to_be_enabled()


def test_a_message_that_could_not_be_sent_is_announced(tabs: Tabs, tab: Tab) -> None:
    tabs.expect_console_error(REFUSED)
    tab.page.route("**/api/chat", lambda route: route.abort("connectionrefused"))
    tab.send("please fail to reach the server")
    expect(tab.answers().last.get_by_test_id("message-note")).to_have_text("Connection lost")
    expect(tab.page.locator("#announcer")).to_have_text(
        "Connection lost before the answer began; Retry is available."
    )


@pytest.mark.parametrize("ending", ["done", "error"])
def test_an_answer_cut_by_a_stopping_server_is_announced_as_cut_not_complete(
    tab: Tab, ending: str
) -> None:
    """Cut with a done event, it was announced as "Answer complete"; with an error, not at all."""
    tab.page.route("**/api/chat", cut_by_shutdown(ending))
    tab.send("please cut this answer at the shutdown")
    expect(tab.answers().last.get_by_test_id("message-note")).to_have_text("Interrupted")
    expect(tab.page.locator("#announcer")).to_have_text(
        "The server stopped the answer. The answer so far is kept; Retry is available."
    )


# 3. A limit's countdown, read again ------------------------------------------------------------

WAIT = re.compile(r"You can send again in (\d+) s\.")


def test_a_limits_countdown_read_again_later_gives_the_wait_left(
    tabs: Tabs, server: LiveServer
) -> None:
    """The banner is an alert, read once when it appears; the words a screen reader found in it
    later still said the wait at first ("48 s" six seconds on) while the countdown went on."""
    tab = limited_tab(tabs, server, requests_per_minute=1)
    page = tab.page
    tab.echo("the one message this minute, for the audit")
    tabs.expect_console_error(r"Failed to load resource: .* 429")
    tab.send("one too many, for the audit")
    banner = page.get_by_test_id("error-banner")
    expect(banner.get_by_test_id("wait")).to_have_text(WAIT)
    now_ms = page.evaluate("Date.now()")
    page.clock.pause_at((now_ms + 1_000) / 1_000)
    countdown = banner.get_by_test_id("wait")
    first = WAIT.fullmatch(countdown.inner_text())
    assert first, countdown.inner_text()
    left = int(first.group(1))
    assert left > 5, f"the wait for a 1-request-a-minute plan was {left} s"
    page.clock.run_for(4_000)
    expect(countdown).to_have_text(f"You can send again in {left - 4} s.")
    # Read again, as a screen reader reads it: the wait left now, once (the visible countdown
    # stays hidden from screen readers), in a timer, whose changes are not announced.
    read = WAIT.findall(banner.aria_snapshot())
    assert read == [str(left - 4)], banner.aria_snapshot()
    expect(banner.get_by_role("timer")).to_have_text(f"You can send again in {left - 4} s.")
    page.clock.resume()


# 4. The console's badges -----------------------------------------------------------------------


def test_the_consoles_ready_and_suspended_badges_have_aa_contrast_in_the_light_scheme(
    tabs: Tabs, server: LiveServer, admin: Person
) -> None:
    """12 px text: "ready" was 4.47:1 (#1a7f37 on #e6f4ea) and "suspended" 4.44:1 (#9a6700 on
    #fff4d6); WCAG AA asks 4.5:1."""
    suspended = new_person(server)
    server.call(lambda s: s.accounts.suspend(suspended.email, "an audit test", until=None))
    tab = tabs.open(viewport=CONSOLE, color_scheme="light")
    tab.login(admin)
    page = tab.page
    tab.goto("/admin")
    expect(page.locator(".badge-ok", has_text="ready").first).to_be_visible()
    ratios = {"ready": round(page.evaluate(CONTRAST, [".badge-ok", None]), 2)}
    tab.goto("/admin/users")
    page.get_by_test_id("user-search").fill(suspended.email)
    status = f'[data-testid="user-row"][data-email="{suspended.email}"] [data-testid="user-status"]'
    expect(page.locator(status)).to_have_text("suspended")
    ratios["suspended"] = round(page.evaluate(CONTRAST, [status, None]), 2)
    assert all(ratio >= 4.5 for ratio in ratios.values()), ratios
