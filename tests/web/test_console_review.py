"""The console's Review section in a real browser (Chromium, through Playwright), against the real
server: a prompt flood across five accounts lands in the review queue; an admin opens it, reads
the evidence (the five accounts, the sample prompt), suspends every account in it for three days
with one click and a reason, and sees the outcome in the queue and in the audit log while the
accounts' API keys stop working. A dismissed report leaves its accounts alone; the audit log pages
back; the count of open reports shows on every section; and nobody but an admin finds any of it.

Each test gets fresh browser contexts and fails on any console error it did not cause on purpose.
"""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import SCRIPTED, LiveServer
from tests.web.browser import Tab, Tabs, eventually
from tests.web.conftest import Browserless, Person
from tests.web.test_console_browser import console, new_plan, screenshot

expect.set_options(timeout=15_000)

FLOODERS = 5  # the watch's default flood_accounts: this many accounts make a flood


def flood(server: LiveServer) -> tuple[str, list[tuple[str, str]]]:
    """Five fresh accounts send the same prompt but for a digit: a prompt flood. The prompt's
    words are new to this server (the watch ignores digits and punctuation, so the tag is
    letters only), which tells this flood's report from any other in the shared queue.
    Returns the tag and the accounts' (email, key)."""
    tag = "".join(random.choices(string.ascii_lowercase, k=10))
    accounts = [server.new_user(plan="roomy") for _ in range(FLOODERS)]
    for index, (_, key) in enumerate(accounts):
        text = f"Buy cheap pills at {index} from the {tag} shop"
        reply = server.client(key).chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": text}]
        )
        assert reply.choices[0].message.content == f"You said: {text}"
    return tag, accounts


def open_reports(operator: Browserless) -> list[dict[str, Any]]:
    response = operator.api("GET", "/admin/reports", params={"status": "open", "limit": 1000})
    assert response.status_code == 200, response.text
    reports: list[dict[str, Any]] = response.json()["data"]
    return reports


def flood_report(operator: Browserless, tag: str) -> dict[str, Any]:
    """The open prompt_flood report of the flood tagged ``tag``."""
    [report] = [
        r
        for r in open_reports(operator)
        if r["kind"] == "prompt_flood" and tag in str(r["evidence"].get("sample", ""))
    ]
    return report


def user_id(operator: Browserless, email: str) -> str:
    response = operator.api("GET", f"/admin/users/{email}")
    assert response.status_code == 200, response.text
    found: str = response.json()["user"]["id"]
    return found


def expect_open_count(page: Page, operator: Browserless) -> int:
    """The nav badge shows the number of open reports the API lists (hidden at zero)."""
    count = len(open_reports(operator))
    badge = page.get_by_test_id("nav-review-count")
    if count:
        expect(badge).to_have_text(str(count))
        expect(page.get_by_test_id("nav-review")).to_contain_text(f"{count} open report")
    else:
        expect(badge).to_be_hidden()
    return count


def report_row(page: Page, report_id: int) -> Any:
    return page.locator(f'[data-testid="report-row"][data-id="{report_id}"]')


def resolve_in_dialog(page: Page, report_id: int, reason: str, days: str | None = None) -> None:
    """Fill the open confirm dialog and submit; the resolve call must succeed."""
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    page.get_by_test_id("report-reason").fill(reason)
    if days is not None:
        page.get_by_test_id("report-days").fill(days)
    with page.expect_response(lambda r: f"/api/admin/reports/{report_id}/resolve" in r.url) as done:
        page.get_by_test_id("confirm-ok").click()
    assert done.value.status == 200, done.value.text()
    expect(dialog).to_be_hidden()


# 1. A flood, reviewed and stopped ----------------------------------------------------------------


def test_an_operator_reviews_a_prompt_flood_and_suspends_every_account_in_it(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    tag, accounts = flood(server)
    report = flood_report(operator, tag)
    report_id = report["id"]
    ids = {user_id(operator, email) for email, _ in accounts}
    assert set(report["evidence"]["accounts"]) == ids

    # Any section shows how many reports wait; the link leads to them.
    tab: Tab = console(tabs, admin, "usage")
    page = tab.page
    expect_open_count(page, operator)
    page.get_by_test_id("nav-review").click()
    expect(page).to_have_url(tab.url("/admin/review"))
    expect(page.get_by_test_id("nav-review")).to_have_attribute("aria-current", "page")
    expect(page.get_by_test_id("review-status")).to_have_value("open")
    expect_open_count(page, operator)

    row = report_row(page, report_id)
    expect(row).to_have_attribute("data-status", "open")
    expect(row.get_by_test_id("report-kind")).to_have_text("Prompt flood")
    expect(row.get_by_test_id("report-response")).to_have_text("throttle")
    expect(row.get_by_test_id("report-summary")).to_contain_text(f"{FLOODERS} accounts")
    expect(row.get_by_test_id("report-summary")).to_contain_text(f"from the {tag} shop")
    expect(row).to_contain_text("just now")

    # A click on the row shows the whole evidence; another hides it.
    detail = page.locator(f"#report-detail-{report_id}")
    expect(detail).to_have_count(0)
    row.locator("td.ev-cell").click()
    evidence = detail.get_by_test_id("report-evidence")
    expect(evidence).to_be_visible()
    expect(evidence.get_by_test_id("report-account")).to_have_count(FLOODERS)
    shown = evidence.get_by_test_id("report-account").evaluate_all(
        "items => items.map((item) => item.textContent.trim())"
    )
    assert set(shown) == ids
    expect(evidence).to_contain_text(f"Accounts ({FLOODERS})")
    expect(evidence).to_contain_text("Sample prompt")
    expect(evidence).to_contain_text(re.compile(rf"Buy cheap pills at \d from the {tag} shop"))
    expect(evidence).to_contain_text(report["subject"])
    row.get_by_test_id("report-kind").click()
    expect(detail).to_have_count(0)
    row.get_by_test_id("report-kind").click()
    expect(evidence).to_be_visible()

    # Suspend: a reason is required; Cancel does nothing.
    dialog = page.get_by_test_id("confirm-dialog")
    row.get_by_test_id("report-suspend").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"the {FLOODERS} accounts in report #{report_id}")
    page.get_by_test_id("confirm-cancel").click()
    expect(dialog).to_be_hidden()
    assert flood_report(operator, tag)["status"] == "open"
    row.get_by_test_id("report-suspend").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.locator("#confirm-error")).to_have_text("Reason is required.")
    expect(dialog).to_be_visible()
    resolve_in_dialog(page, report_id, "pill spam flood", days="3")

    # The row stays where it was, now showing what was done.
    resolution = f"suspend for 3 days: pill spam flood ({FLOODERS} accounts)"
    expect(row).to_have_attribute("data-status", "actioned")
    expect(row.get_by_test_id("report-status")).to_have_text("actioned")
    expect(row.get_by_test_id("report-resolution")).to_have_text(resolution)
    expect(row).to_contain_text(f"by {admin.email}")
    expect(row.get_by_test_id("report-suspend")).to_have_count(0)
    expect(evidence).to_contain_text(resolution)

    # Every account in it is out, for three days.
    for email, key in accounts:
        with pytest.raises(openai.AuthenticationError):
            server.client(key).models.list()
        user = operator.api("GET", f"/admin/users/{email}").json()["user"]
        assert user["status"] == "suspended"
        assert user["disabled_reason"] == "prompt_flood: pill spam flood"
        until = datetime.fromisoformat(user["disabled_until"])
        assert abs(until - (datetime.now(UTC) + timedelta(days=3))) < timedelta(minutes=5)

    # The audit log's newest entry says who did it, to which report, why, and to how many.
    newest = page.get_by_test_id("audit-row").first
    expect(newest).to_have_attribute("data-action", "report.suspend")
    expect(newest.get_by_test_id("audit-actor")).to_have_text(admin.email)
    expect(newest.get_by_test_id("audit-target")).to_have_text(f"report #{report_id}")
    expect(newest.get_by_test_id("audit-details")).to_contain_text("reason: pill spam flood")
    expect(newest.get_by_test_id("audit-details")).to_contain_text(f"accounts: {FLOODERS}")
    [logged] = operator.api("GET", "/admin/audit", params={"limit": 1}).json()["data"]
    expect(newest).to_have_attribute("data-id", str(logged["id"]))
    expect_open_count(page, operator)
    expect(page.get_by_test_id("admin-error")).to_be_hidden()
    screenshot(page, "console-review.png")

    # The actioned filter lists it (and a reload keeps the filter).
    page.get_by_test_id("review-status").select_option("actioned")
    expect(page).to_have_url(re.compile(r"/admin/review\?status=actioned$"))
    expect(row.get_by_test_id("report-resolution")).to_have_text(resolution)
    page.reload()
    expect(page.get_by_test_id("review-status")).to_have_value("actioned")
    expect(row.get_by_test_id("report-status")).to_have_text("actioned")
    expect(page.locator('[data-testid="report-row"][data-status="open"]')).to_have_count(0)
    page.get_by_test_id("review-status").select_option("open")
    expect(page.get_by_test_id("review-table")).to_be_visible()
    expect(row).to_have_count(0)  # resolved elsewhere than on this page: not in the open queue
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


def test_a_dismissed_report_leaves_its_accounts_alone(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    tag, accounts = flood(server)
    report_id = flood_report(operator, tag)["id"]
    tab = console(tabs, admin, "review")
    page = tab.page
    row = report_row(page, report_id)
    row.get_by_test_id("report-dismiss").click()
    expect(page.get_by_test_id("report-days")).to_have_count(0)  # only a suspension has days
    resolve_in_dialog(page, report_id, "a shop's own load test")
    expect(row.get_by_test_id("report-status")).to_have_text("dismissed")
    expect(row.get_by_test_id("report-resolution")).to_have_text("dismiss: a shop's own load test")
    newest = page.get_by_test_id("audit-row").first
    expect(newest).to_have_attribute("data-action", "report.dismiss")
    expect(newest.get_by_test_id("audit-actor")).to_have_text(admin.email)
    for _, key in accounts:
        assert server.client(key).models.list().data
    page.get_by_test_id("review-status").select_option("dismissed")
    expect(row.get_by_test_id("report-status")).to_have_text("dismissed")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


# 2. The audit log pages back -------------------------------------------------------------------


def test_the_audit_log_shows_the_latest_fifty_and_loads_older_ones(
    tabs: Tabs, admin: Person, operator: Browserless
) -> None:
    name = new_plan(operator, "audited", cache_ttl_s=0)
    for priority in range(1, 52):  # 51 more entries: more than a page of them
        changed = operator.api("PUT", f"/admin/plans/{name}", json={"priority": priority})
        assert changed.status_code == 200, changed.text
    logged = operator.api("GET", "/admin/audit", params={"limit": 100}).json()["data"]
    assert len(logged) >= 52

    tab = console(tabs, admin, "review")
    page = tab.page
    rows = page.get_by_test_id("audit-row")
    expect(rows).to_have_count(50)

    def ids() -> list[int]:
        shown: list[int] = rows.evaluate_all("rows => rows.map((row) => Number(row.dataset.id))")
        return shown

    assert ids() == [entry["id"] for entry in logged[:50]]
    newest = rows.first
    expect(newest).to_have_attribute("data-action", "plan.update")
    expect(newest.get_by_test_id("audit-target")).to_have_text(name)
    expect(newest.get_by_test_id("audit-details")).to_have_text("priority: 51")
    expect(newest.get_by_test_id("audit-actor")).to_have_text(admin.email)

    with page.expect_response(lambda r: f"before={logged[49]['id']}" in r.url) as older:
        page.get_by_test_id("audit-more").click()
    assert older.value.status == 200
    expect(rows).to_have_count(len(logged))
    assert ids() == [entry["id"] for entry in logged]
    if len(logged) < 100:  # the whole log is shown: nothing older to load
        expect(page.get_by_test_id("audit-more")).to_be_hidden()
        expect(page.locator("#audit-end")).to_be_visible()
    eventually(lambda: ids() == sorted(ids(), reverse=True), what="the log to run newest first")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


# 3. Nobody but an admin finds it ----------------------------------------------------------------


def test_people_and_visitors_who_are_not_admins_find_no_review_section(
    tabs: Tabs, person: Person
) -> None:
    tabs.expect_console_error(r"/admin/review:\d+: Failed to load resource: .* 404")
    regular = tabs.open()
    regular.login(person)
    anonymous = tabs.open()
    for tab in (regular, anonymous):
        page = tab.page
        response = tab.goto("/admin/review")
        assert response is not None and response.status == 404
        assert page.url == tab.url("/admin/review")
        expect(page.get_by_test_id("not-found")).to_be_visible()
        expect(page.locator("#admin")).to_have_count(0)
        expect(page.get_by_test_id("review-table")).to_have_count(0)
        expect(page.get_by_test_id("nav-review-count")).to_have_count(0)
        assert page.request.get(tab.url("/api/admin/reports")).status == 404
        assert page.request.get(tab.url("/api/admin/audit")).status == 404
        resolve = page.request.post(
            tab.url("/api/admin/reports/1/resolve"), data={"action": "dismiss", "reason": "x"}
        )
        assert resolve.status == 404
    regular.goto("/")
    regular.ready()
