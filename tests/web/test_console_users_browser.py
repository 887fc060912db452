"""The console's users page in Chromium (through Playwright), against the real server: what an
operator sees of a temporary ban, of more users than one page holds, and of each action's result;
and where the keyboard focus goes when the plan editor closes. Every test fails on a console
error it did not cause on purpose."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.conftest import LiveServer
from tests.web.browser import Tabs
from tests.web.conftest import Browserless, Person
from tests.web.test_console_browser import console
from tests.web.test_console_users_api import temporarily_ban


def test_a_temporarily_banned_user_reads_so_in_the_list_and_the_details(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    email, _ = server.new_user()
    temporarily_ban(server, operator.http, email)
    tab = console(tabs, admin, "users")
    page = tab.page
    page.get_by_test_id("user-search").fill(email)
    row = page.locator(f'[data-testid="user-row"][data-email="{email}"]')
    expect(row.get_by_test_id("user-status")).to_have_text("temporarily banned")
    row.click()
    panel = page.get_by_test_id("user-detail")
    expect(panel.get_by_test_id("user-status")).to_have_text("temporarily banned")
    panel.get_by_test_id("user-restore").click()
    expect(panel.get_by_test_id("user-status")).to_have_text("active")
    expect(row.get_by_test_id("user-status")).to_have_text("active")
