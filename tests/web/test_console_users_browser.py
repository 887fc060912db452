"""The console's users page in Chromium (through Playwright), against the real server: what an
operator sees of a temporary ban, of more users than one page holds, and of each action's result;
and where the keyboard focus goes when the plan editor closes. Every test fails on a console
error it did not cause on purpose."""

from __future__ import annotations

import uuid

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


def test_more_users_than_a_page_are_reached_with_load_more(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    plan = f"crowd-{uuid.uuid4().hex[:6]}"
    assert operator.api("PUT", f"/admin/plans/{plan}", json={}).status_code == 200
    emails = [f"crowd-{i:02}-{uuid.uuid4().hex[:8]}@example.org" for i in range(53)]
    for email in emails:
        server.call(lambda s, email=email: s.accounts.create_user(email, plan=plan))
    tab = console(tabs, admin, "users")
    tab.goto(f"/admin/users?q={plan}")
    page = tab.page
    rows = page.get_by_test_id("user-row")
    expect(rows).to_have_count(50)
    count = page.get_by_test_id("users-count")
    expect(count).to_have_text("Showing the 50 newest; load more or search to find others.")
    oldest = page.locator(f'[data-testid="user-row"][data-email="{emails[0]}"]')
    expect(oldest).to_have_count(0)
    page.get_by_test_id("users-more").click()
    expect(rows).to_have_count(53)
    expect(oldest).to_be_visible()
    expect(count).to_have_text("All 53 shown.")
    expect(page.get_by_test_id("users-more")).to_be_hidden()


def test_each_action_on_a_user_says_on_the_page_what_it_did(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    email, _ = server.new_user(plan="roomy")
    temporarily_ban(server, operator.http, email)
    tab = console(tabs, admin, "users")
    tab.goto(f"/admin/users?q={email}")  # opens the user
    page = tab.page
    panel = page.get_by_test_id("user-detail")
    done = panel.get_by_test_id("user-action-done")
    expect(panel.get_by_test_id("user-temporary-ban")).to_be_visible()
    expect(done).to_have_count(0)

    panel.get_by_test_id("user-restore").click()
    expect(done).to_have_text(f"Restored {email}; temporary ban lifted.")
    expect(done).to_be_visible()

    panel.get_by_test_id("user-plan").select_option("free")
    panel.get_by_test_id("user-plan-save").click()
    expect(done).to_have_text(f"Moved {email} to free.")

    panel.get_by_test_id("user-suspend").click()
    page.get_by_test_id("suspend-reason").fill("checking the notice")
    page.get_by_test_id("confirm-ok").click()
    expect(done).to_have_text(f"Suspended {email}.")
    expect(panel.get_by_test_id("user-status")).to_have_text("suspended")

    panel.get_by_test_id("user-restore").click()
    expect(done).to_have_text(f"Restored {email}.")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


def test_closing_the_plan_editor_gives_focus_back_to_what_opened_it(
    tabs: Tabs, admin: Person
) -> None:
    page = console(tabs, admin, "plans").page
    free = page.locator('[data-testid="plan-row"][data-plan="free"]')
    edit = free.get_by_test_id("plan-edit")
    editor = page.locator("#plan-editor")
    for close in ("#plan-close", "#plan-cancel", "Escape"):
        edit.click()
        expect(editor).to_be_visible()
        if close == "Escape":
            page.keyboard.press("Escape")
        else:
            page.locator(close).click()
        expect(editor).to_be_hidden()
        expect(free.get_by_test_id("plan-edit")).to_be_focused()
    new_plan = page.locator("#plan-new")
    new_plan.click()
    expect(editor).to_be_visible()
    page.keyboard.press("Escape")
    expect(new_plan).to_be_focused()
