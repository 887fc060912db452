"""What the accessibility audit found, in a real Chromium against the real server: the console's
status badges have AA contrast in the light scheme.
"""

from __future__ import annotations

from playwright.sync_api import expect

from tests.conftest import LiveServer
from tests.web.browser import Tabs
from tests.web.conftest import Person, new_person
from tests.web.test_chat_page_browser import CONTRAST
from tests.web.test_console_browser import CONSOLE

expect.set_options(timeout=15_000)


# 4. The console's badges -------------------------------------------------------------------------


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
