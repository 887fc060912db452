"""The operator console in a real browser (Chromium, through Playwright), against the real server:
an admin logs in with the login form and checks what an operator checks. The dashboard's figures
move while a load runs; a plan edited in the console binds the next API request; a user is found,
moved to another plan, suspended, restored and has a key revoked; usage and feedback reports show
what just happened; and nobody but an admin finds the console at all.

Each test gets fresh browser contexts and fails on any console error it did not cause on purpose
(Chromium logs every failed fetch, and Content-Security-Policy violations, there).
"""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

import openai
import pytest
from playwright.sync_api import Locator, Page, ViewportSize, expect

from tests.conftest import SCRIPTED, LiveServer
from tests.web.browser import SCREENSHOTS, Tab, Tabs, eventually
from tests.web.conftest import Browserless, Person, new_person
from tests.web.test_console_api import CONSOLE_PAGES

expect.set_options(timeout=15_000)

CONSOLE: ViewportSize = {"width": 1280, "height": 900}
# A rate the console shows that is not zero: 0.40/s, 12/s, 1.2k/s (but not 0/s).
NONZERO_RATE = re.compile(r"^(?!0/s$)\d[\d.]*k?/s$")


def console(tabs: Tabs, who: Person, section: str = "dashboard") -> Tab:
    """A 1280x900 tab, logged in through the login form, on a section of the console."""
    tab = tabs.open(viewport=CONSOLE)
    tab.login(who)
    response = tab.goto("/admin" if section == "dashboard" else f"/admin/{section}")
    assert response is not None and response.status == 200
    expect(tab.page.get_by_test_id(f"nav-{section}")).to_have_attribute("aria-current", "page")
    return tab


def shown(figure: Locator) -> int | None:
    """The exact number behind a figure: the console shows it compact (1.2k) and in full in its
    title (1,234). None while it shows no number."""
    digits = re.sub(r"\D", "", figure.get_attribute("title") or "")
    return int(digits) if digits else None


def at_least(figure: Locator, least: int, what: str) -> int:
    return eventually(
        lambda: (n := shown(figure)) is not None and n >= least and n,
        timeout=20,
        what=f"{what} to reach {least} (shows {figure.get_attribute('title')!r})",
    )


def new_plan(operator: Browserless, prefix: str, **fields: Any) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    response = operator.api("PUT", f"/admin/plans/{name}", json=fields)
    assert response.status_code == 200, response.text
    return name


def ask(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": text}]
    )


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


class Load:
    """Chat completions on scripted-echo from a few threads, each pausing a little between
    requests (a steady load the 1 s points all see), until stopped."""

    def __init__(self, server: LiveServer, workers: int = 3, pause: float = 0.1) -> None:
        _, key = server.new_user(plan="roomy")
        self.clients = [server.client(key) for _ in range(workers)]
        self.pause = pause
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)
        ]

    def _run(self, worker: int) -> None:
        client = self.clients[worker]
        sent = 0
        while not self.stop.is_set() and sent < 400:
            try:
                reply = ask(client, f"load {worker} {sent}")
                assert reply.choices[0].message.content == f"You said: load {worker} {sent}"
            except BaseException as error:
                self.errors.append(error)
                return
            sent += 1
            with self.lock:
                self.done += 1
            self.stop.wait(self.pause)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, f"the load failed: {self.errors[:3]}"


# The requests chart: where its line is, in SVG coordinates. A value above zero is drawn above
# the x axis (a smaller y); the axis is the grid's first line (the tick at 0).
CHART_POINTS = """(chart) => {
    const svg = chart.querySelector('svg');
    if (!svg) return null;
    const axis = Number(svg.querySelector('g.grid line').getAttribute('y1')) - 0.5;
    const points = [];
    for (const path of svg.querySelectorAll('path.series')) {
        for (const m of path.getAttribute('d').matchAll(/[ML](-?[\\d.]+) (-?[\\d.]+)/g)) {
            points.push([Number(m[1]), Number(m[2])]);
        }
    }
    points.sort((a, b) => a[0] - b[0]);
    return {axis, count: points.length, recent: points.slice(-15).map((p) => p[1])};
}"""


def chart(page: Page, key: str) -> dict[str, Any]:
    found: dict[str, Any] = page.get_by_test_id(f"chart-{key}").evaluate(CHART_POINTS)
    return found


# 1. The dashboard while a load runs -----------------------------------------------------------


def test_the_dashboard_figures_move_while_a_load_runs(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    tab = console(tabs, admin)
    page = tab.page
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    total = page.get_by_test_id("total-requests")
    refusals = page.get_by_test_id("total-refusals")
    expect(total).to_have_attribute("title", re.compile(r"\d"))
    expect(refusals).to_have_attribute("title", re.compile(r"\d"))
    requests_before = shown(total)
    refusals_before = shown(refusals)
    assert requests_before is not None and refusals_before is not None
    points_before = chart(page, "requests")["count"]
    updated = page.get_by_test_id("last-update")
    expect(updated).to_have_text(re.compile(r"^Updated \d\d:\d\d:\d\d$"))
    first_update = updated.inner_text()

    backend = page.locator(f'[data-testid="backend-row"][data-backend="scripted:{SCRIPTED}"]')
    expect(backend).to_contain_text(f"scripted:{SCRIPTED}")
    expect(backend).to_contain_text(SCRIPTED)
    expect(backend.locator(".badge")).to_have_text("ready")

    # A plan that allows one request a minute: its user's next two are refused (429).
    tiny = new_plan(operator, "tiny", requests_per_minute=1, cache_ttl_s=0)
    tiny_client = server.client(server.new_user(plan=tiny)[1])

    with Load(server) as load:
        outcomes = []
        for n in range(3):
            try:
                ask(tiny_client, f"tiny {n}")
                outcomes.append("served")
            except openai.RateLimitError:
                outcomes.append("refused")
        assert outcomes == ["served", "refused", "refused"]

        expect(page.get_by_test_id("stat-requests")).to_have_text(NONZERO_RATE)
        expect(page.get_by_test_id("stat-tokens")).to_have_text(NONZERO_RATE)
        expect(page.get_by_test_id("stat-ttft")).to_have_text(re.compile(r"^\d[\d.]* m?s$"))
        expect(page.get_by_test_id("stat-errors")).to_have_text("0%")
        # The chart draws the load above the axis, at its newest points.
        eventually(
            lambda: (c := chart(page, "requests")) and min(c["recent"]) < c["axis"],
            what="the requests chart to rise above zero",
        )
        eventually(lambda: load.done >= 40, timeout=30, what="40 requests of load")
        at_least(total, requests_before + 41, "total requests")
    # Every request of the load and the tiny user's one, all counted.
    at_least(total, requests_before + load.done + 1, "total requests")
    assert chart(page, "requests")["count"] > points_before

    at_least(refusals, refusals_before + 2, "total refusals")
    expect(page.locator("#note-refusals")).to_have_text(
        re.compile(r"^\d[\d.]*k? in the last hour$")
    )
    refused_hour = int(page.locator("#note-refusals").inner_text().split()[0])
    assert refused_hour >= 2
    expect(page.locator('[data-testid="chart-refusals"] rect.bar').first).to_be_attached()
    expect(page.locator("#legend-refusals")).to_contain_text("rate limit exceeded")

    expect(updated).not_to_have_text(first_update)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()
    screenshot(page, "console-dashboard.png")


# 2. A plan edited in the console binds the next request ---------------------------------------


def plan_cells(page: Page, name: str) -> Locator:
    """A plan's row, as numbers: priority, requests/min, tokens/min, tokens/day, streams,
    max tokens (then models, patience, SLO, cache TTL)."""
    return page.locator(f'[data-testid="plan-row"][data-plan="{name}"] td')


def test_a_plan_edited_in_the_console_binds_the_next_request(
    tabs: Tabs, server: LiveServer, admin: Person
) -> None:
    tab = console(tabs, admin, "plans")
    page = tab.page
    expect(page.get_by_test_id("plan-row").first).to_be_visible()
    name = f"console-{uuid.uuid4().hex[:6]}"

    page.get_by_test_id("plan-new").click()
    form = page.get_by_test_id("plan-form")
    expect(form).to_be_visible()
    form.get_by_test_id("plan-name").fill(name)
    form.locator('input[name="requests_per_minute"]').fill("100")
    form.locator('input[name="cache_ttl_s"]').fill("0")
    max_tokens = form.locator('input[name="max_tokens"]')
    max_tokens.fill("0")  # refused by the form itself, next to the field
    page.get_by_test_id("plan-save").click()
    expect(page.locator("#plan-error-max_tokens")).to_have_text("At least 1.")
    expect(max_tokens).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("plan-saved")).to_be_hidden()
    max_tokens.fill("3")
    page.get_by_test_id("plan-save").click()
    expect(page.get_by_test_id("plan-saved")).to_have_text(f"Created plan “{name}”.")
    cells = plan_cells(page, name)
    expect(cells.nth(1)).to_have_text("100")
    expect(cells.nth(5)).to_have_text("3")

    # A user on the new plan asks for more than three tokens and gets three.
    client = server.client(server.new_user(plan=name)[1])
    reply = ask(client, "please repeat all of this " + "word " * 50)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens <= 3
    assert reply.choices[0].message.content == "You said: please"

    # Edit it again from its row: one request a minute.
    page.get_by_test_id("plan-cancel").click()
    expect(page.get_by_test_id("plan-editor")).to_be_hidden()
    page.locator(f'[data-testid="plan-row"][data-plan="{name}"]').get_by_test_id(
        "plan-edit"
    ).click()
    expect(form.get_by_test_id("plan-name")).to_have_value(name)
    expect(form.get_by_test_id("plan-name")).not_to_be_editable()
    expect(max_tokens).to_have_value("3")
    form.locator('input[name="requests_per_minute"]').fill("1")
    page.get_by_test_id("plan-save").click()
    expect(page.get_by_test_id("plan-saved")).to_have_text(f"Saved “{name}”.")
    expect(cells.nth(1)).to_have_text("1")

    limited = server.client(server.new_user(plan=name)[1])
    assert ask(limited, "first").choices[0].message.content == "You said: first"
    with pytest.raises(openai.RateLimitError):
        ask(limited, "second")

    # The server kept it: a fresh page shows the same limits.
    page.reload()
    expect(cells.nth(1)).to_have_text("1")
    expect(cells.nth(5)).to_have_text("3")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


# 3. Users: plan, suspension, restore, keys ----------------------------------------------------


def test_an_operator_finds_a_user_changes_their_plan_suspends_restores_and_revokes_a_key(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    narrow = new_plan(operator, "narrow", max_tokens=2, cache_ttl_s=0, requests_per_minute=1000)
    victim = new_person(server)
    key = server.call(lambda s: s.accounts.create_key(victim.email, "laptop")).secret
    client = server.client(key)
    assert ask(client, "one two three four").choices[0].message.content == (
        "You said: one two three four"
    )
    web = Browserless(server.base_url)
    assert web.login(victim).status_code == 303
    assert web.api("GET", "/me").json()["plan"] == "roomy"

    tab = console(tabs, admin, "users")
    page = tab.page
    rows = page.get_by_test_id("user-row")
    expect(rows.first).to_be_visible()
    page.get_by_test_id("user-search").fill(victim.email)
    expect(rows).to_have_count(1)
    row = page.locator(f'[data-testid="user-row"][data-email="{victim.email}"]')
    expect(row).to_contain_text("roomy")
    expect(row.get_by_test_id("user-status")).to_have_text("active")
    row.click()

    panel = page.get_by_test_id("user-detail")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("user-detail-email")).to_have_text(victim.email)
    expect(panel.get_by_test_id("user-status")).to_have_text("active")
    expect(panel.get_by_test_id("key-row")).to_have_count(1)
    expect(panel.get_by_test_id("key-row")).to_contain_text("laptop")

    # Another plan: the API says so, and the next answer is cut to the plan's two tokens.
    save = panel.get_by_test_id("user-plan-save")
    expect(save).to_be_disabled()
    panel.get_by_test_id("user-plan").select_option(narrow)
    expect(save).to_be_enabled()
    save.click()
    expect(row).to_contain_text(narrow)
    expect(panel.get_by_test_id("user-plan")).to_have_value(narrow)
    expect(panel.get_by_test_id("user-plan-save")).to_be_disabled()
    assert web.api("GET", "/me").json()["plan"] == narrow
    cut = ask(client, "one two three four")
    assert cut.choices[0].message.content == "You said:"
    assert cut.choices[0].finish_reason == "length"

    # Suspend: a reason is required; then the key stops working and the session ends.
    dialog = page.get_by_test_id("confirm-dialog")
    panel.get_by_test_id("user-suspend").click()
    expect(dialog).to_be_visible()
    page.get_by_test_id("confirm-ok").click()
    expect(page.locator("#confirm-error")).to_have_text("Reason is required.")
    expect(dialog).to_be_visible()
    page.get_by_test_id("suspend-reason").fill("scraping the API")
    page.get_by_test_id("suspend-days").fill("2")
    page.get_by_test_id("confirm-ok").click()
    expect(dialog).to_be_hidden()
    expect(panel.get_by_test_id("user-status")).to_have_text("suspended")
    expect(row.get_by_test_id("user-status")).to_have_text("suspended")
    expect(panel.get_by_test_id("user-disabled")).to_contain_text("Reason: scraping the API")
    expect(panel.get_by_test_id("user-disabled")).to_contain_text("Suspended until")
    with pytest.raises(openai.AuthenticationError):
        ask(client, "still there?")
    assert web.api("GET", "/me").status_code == 401

    # Restore: the key works again, and so does logging in.
    panel.get_by_test_id("user-restore").click()
    expect(panel.get_by_test_id("user-status")).to_have_text("active")
    expect(row.get_by_test_id("user-status")).to_have_text("active")
    expect(panel.get_by_test_id("user-disabled")).to_have_count(0)
    assert ask(client, "back again").choices[0].message.content == "You said:"
    assert web.login(victim).status_code == 303
    web.close()

    # Revoke the key: Cancel leaves it alone; Revoke ends it at once.
    revoke = panel.get_by_test_id("key-revoke")
    revoke.click()
    expect(dialog).to_be_visible()
    page.get_by_test_id("confirm-cancel").click()
    expect(dialog).to_be_hidden()
    assert client.models.list().data
    expect(panel.get_by_test_id("key-row")).not_to_contain_text("revoked")
    revoke.click()
    expect(dialog).to_be_visible()
    page.get_by_test_id("confirm-ok").click()
    expect(dialog).to_be_hidden()
    expect(panel.get_by_test_id("key-row")).to_contain_text("revoked")
    expect(panel.get_by_test_id("key-revoke")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    expect(page.get_by_test_id("admin-error")).to_be_hidden()
    screenshot(page, "console-users.png")


# 4. Nobody but an admin finds the console -----------------------------------------------------


def test_people_and_visitors_who_are_not_admins_find_no_console(tabs: Tabs, person: Person) -> None:
    # Chromium reports each 404 page's own status on the console.
    tabs.expect_console_error(r"/admin(/\w+)?:\d+: Failed to load resource: .* 404")
    regular = tabs.open()
    regular.login(person)
    anonymous = tabs.open()
    for tab in (regular, anonymous):
        page = tab.page
        for path in CONSOLE_PAGES:
            response = tab.goto(path)
            assert response is not None and response.status == 404, path
            assert page.url == tab.url(path)  # not sent to the login page either
            expect(page.get_by_test_id("not-found")).to_be_visible()
            expect(page.locator("#admin")).to_have_count(0)
            expect(page.locator('script[src="/static/admin.js"]')).to_have_count(0)
            expect(page.locator('[data-testid^="nav-"]')).to_have_count(0)
            expect(page.locator("body")).not_to_contain_text("Operator console")
            expect(page.locator("body")).not_to_contain_text("Dashboard")
        assert page.request.get(tab.url("/api/admin/stats")).status == 404
        assert page.request.get(tab.url("/api/admin/users")).status == 404
    # The regular person is still logged in and chatting.
    regular.goto("/")
    regular.ready()


# 5. Usage and feedback reports ----------------------------------------------------------------


def test_the_usage_page_ranks_who_just_used_the_service(
    tabs: Tabs, server: LiveServer, admin: Person, operator: Browserless
) -> None:
    metered = new_plan(
        operator,
        "metered",
        max_tokens=5,
        cache_ttl_s=0,
        requests_per_minute=1000,
        tokens_per_minute=10_000_000,
        tokens_per_day=100_000_000,
    )
    heavy_email, heavy_key = server.new_user(plan=metered)
    light_email, light_key = server.new_user(plan=metered)
    heavy = server.client(heavy_key)
    for n in range(3):
        ask(heavy, f"{n} " + "word " * 2500)
    # Lighter, yet heavy enough to rank among the top 20 when the whole suite shares the server.
    ask(server.client(light_key), "word " * 2000)

    tab = console(tabs, admin, "usage")
    page = tab.page
    period = page.get_by_test_id("usage-period")
    expect(period).to_have_value("24")
    with page.expect_response(lambda r: "/api/admin/usage?hours=1" in r.url) as answer:
        period.select_option("1")
    assert answer.value.status == 200
    expect(page).to_have_url(re.compile(r"/admin/usage\?hours=1$"))

    report = operator.api("GET", "/admin/usage", params={"hours": 1}).json()
    [heavy_report] = [u for u in report["top_users"] if u["email"] == heavy_email]
    users = page.get_by_test_id("usage-user-row")
    heavy_row = page.locator(f'[data-testid="usage-user-row"][data-email="{heavy_email}"]')
    light_row = page.locator(f'[data-testid="usage-user-row"][data-email="{light_email}"]')
    expect(heavy_row).to_be_visible()
    expect(light_row).to_be_visible()
    expect(heavy_row).to_contain_text(metered)
    ranked = users.evaluate_all("rows => rows.map((row) => row.dataset.email)")
    assert ranked.index(heavy_email) < ranked.index(light_email)
    # Numbers: #, requests, prompt, completion, total.
    numbers = heavy_row.locator("td.num")
    expect(numbers.nth(1)).to_have_text("3")
    assert shown(numbers.nth(2)) == heavy_report["prompt_tokens"] >= 3 * 2500
    assert shown(numbers.nth(3)) == heavy_report["completion_tokens"] == 3 * 5
    assert shown(numbers.nth(4)) == heavy_report["total_tokens"]

    plan_row = page.locator(f'[data-testid="usage-plan-row"][data-plan="{metered}"]')
    expect(plan_row.locator("td.num").nth(0)).to_have_text("2")  # users
    expect(plan_row.locator("td.num").nth(1)).to_have_text("4")  # requests

    # The email links to the user in the users section, opened.
    heavy_row.get_by_role("link", name=heavy_email).click()
    expect(page).to_have_url(re.compile(r"/admin/users\?q="))
    expect(page.get_by_test_id("user-detail-email")).to_have_text(heavy_email)
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


def feedback_figure(page: Page, label: str) -> int:
    big = page.get_by_test_id("flywheel-feedback").locator(".big", has_text=label)
    return int(big.locator(".big-value").inner_text())


def test_the_flywheel_page_counts_ratings(tabs: Tabs, admin: Person, web: Browserless) -> None:
    tab = console(tabs, admin, "flywheel")
    page = tab.page
    feedback = page.get_by_test_id("flywheel-feedback")
    expect(feedback.locator(".big")).to_have_count(3)
    up, down = feedback_figure(page, "thumbs up"), feedback_figure(page, "thumbs down")
    reasons = page.get_by_test_id("flywheel-reasons")
    unsafe_item = reasons.locator(".bar-item", has_text="unsafe")
    unsafe = int(unsafe_item.locator(".bar-value").inner_text()) if unsafe_item.count() else 0

    liked = web.chat(content="a good answer")[-1][1]["message"]["id"]
    disliked = web.chat(content="a bad answer")[-1][1]["message"]["id"]
    assert web.api("PUT", f"/messages/{liked}/rating", json={"rating": 1}).status_code == 200
    assert (
        web.api(
            "PUT", f"/messages/{disliked}/rating", json={"rating": -1, "reasons": ["unsafe"]}
        ).status_code
        == 200
    )

    page.reload()
    expect(feedback.locator(".big", has_text="thumbs up").locator(".big-value")).to_have_text(
        str(up + 1)
    )
    expect(feedback.locator(".big", has_text="thumbs down").locator(".big-value")).to_have_text(
        str(down + 1)
    )
    expect(feedback.locator(".big", has_text="positive").locator(".big-value")).to_have_text(
        re.compile(r"^\d[\d.]*%$")
    )
    expect(unsafe_item.locator(".bar-value")).to_have_text(str(unsafe + 1))
    expect(feedback.locator("svg rect.bar").first).to_be_attached()  # the last 7 days, drawn
    expect(page.get_by_test_id("flywheel-consent")).to_contain_text("of users opted in")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


# 6. Layout -------------------------------------------------------------------------------------

# The users table's header cells that stick out of its scroll box (seen only by scrolling).
CLIPPED_COLUMNS = """() => {
    const table = document.querySelector('[data-testid="users-table"]');
    const right = table.parentElement.getBoundingClientRect().right;
    return [...table.querySelectorAll('thead th')]
        .filter((th) => getComputedStyle(th).display !== 'none')
        .filter((th) => th.getBoundingClientRect().right > right + 1)
        .map((th) => th.textContent.trim());
}"""


def test_beside_a_users_details_the_users_table_shows_every_column(
    tabs: Tabs, server: LiveServer, admin: Person
) -> None:
    victim = new_person(server)  # an ordinary 28-character address, on plan "roomy"
    tab = console(tabs, admin, "users")
    page = tab.page
    page.get_by_test_id("user-search").fill(victim.email)
    expect(page.get_by_test_id("user-row")).to_have_count(1)
    page.get_by_test_id("user-row").click()
    expect(page.get_by_test_id("user-detail-email")).to_have_text(victim.email)
    clipped = {}
    for width in (1280, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        expect(page.get_by_test_id("user-detail")).to_be_visible()
        clipped[width] = page.evaluate(CLIPPED_COLUMNS)
    assert clipped == {1280: [], 1920: []}
