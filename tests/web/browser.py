"""Driving the web chat in a real Chromium: tabs that log in through the login form and record
every console error (Chromium reports Content-Security-Policy violations there too), and the
steps a user takes: pick a model, send a message, wait for the answer.

Playwright drives Debian's /usr/bin/chromium; it never downloads a browser of its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Response,
    ViewportSize,
    expect,
)

if TYPE_CHECKING:  # the fixtures in conftest import this module
    from tests.web.conftest import Person

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-output"

MESSAGE = '[data-testid="message"]'
QUESTION = '[data-testid="message"][data-role="user"]'
ANSWER = '[data-testid="message"][data-role="assistant"]'
BODY = '[data-testid="message-body"]'


def words(text: str) -> list[str]:
    """The letters-only words of a text: the same for Markdown and for the page it renders to."""
    return re.findall(r"[^\W\d_]+", text)


def one_starts_the_other(shown: str, stored: str) -> bool:
    """Whether one text's words begin the other's; the last word of the shorter one may be cut
    mid-word (an answer is streamed in pieces smaller than words)."""
    a, b = words(shown), words(stored)
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return True
    return a[:-1] == b[: len(a) - 1] and b[len(a) - 1].startswith(a[-1])


def eventually(check: Callable[[], T | None], timeout: float = 15, what: str = "") -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {timeout}s for {what or check}")
        time.sleep(0.05)


def is_patch(response: Response) -> bool:
    return response.request.method == "PATCH" and "/api/conversations/" in response.url


class Tab:
    """One page of the chat in its own browser context (its own cookies and storage)."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.context: BrowserContext = page.context
        self.base_url = base_url

    def url(self, path: str) -> str:
        return self.base_url + path

    def goto(self, path: str) -> Response | None:
        return self.page.goto(self.url(path))

    def login(self, person: Person) -> None:
        """Log in with the login form; lands on the chat page, ready."""
        self.goto("/login")
        self.page.get_by_test_id("login-email").fill(person.email)
        self.page.get_by_test_id("login-password").fill(person.password)
        self.page.get_by_test_id("login-submit").click()
        expect(self.page).to_have_url(self.url("/"))
        self.ready()

    def ready(self) -> None:
        """The page's script has run and read the visitor's plan and limits."""
        expect(self.page.get_by_test_id("limits")).to_have_text(re.compile(r"\S"))

    def reload(self) -> None:
        self.page.reload()
        self.ready()

    def pick_model(self, name: str) -> None:
        select = self.page.locator("#model-select")
        expect(select).to_be_visible()
        select.select_option(name)
        expect(select).to_have_value(name)

    @property
    def composer(self) -> Locator:
        return self.page.get_by_test_id("composer")

    def questions(self) -> Locator:
        return self.page.locator(QUESTION)

    def answers(self) -> Locator:
        return self.page.locator(ANSWER)

    def send(self, text: str) -> None:
        self.composer.fill(text)
        self.composer.press("Enter")

    def answer_done(self, answer: Locator | None = None, timeout: float = 15_000) -> Locator:
        """Wait for the (last) answer to finish; returns it."""
        answer = answer if answer is not None else self.answers().last
        expect(answer).to_have_attribute("data-status", "complete", timeout=timeout)
        expect(self.page.get_by_test_id("send")).to_be_visible()
        return answer

    def retry_completes(self, cut: Locator, text: str) -> Locator:
        """Click Retry on the cut answer ``cut`` (its stream no longer intercepted): a new
        answer to ``text`` from scripted-echo, whole, beside it as branch 2 / 2. Returns it."""
        cut_id = cut.get_attribute("data-id")
        cut.get_by_test_id("retry").click()
        answer = self.answer_done()
        expect(answer.locator(BODY)).to_have_text(f"You said: {text}")
        expect(answer.get_by_test_id("branch-label")).to_have_text("2 / 2")
        expect(answer.get_by_test_id("message-note")).to_have_count(0)
        assert answer.get_attribute("data-id") not in (None, cut_id)
        return answer

    def echo(self, text: str) -> Locator:
        """Send a message to scripted-echo and wait for its whole answer; returns the answer."""
        count = self.answers().count()
        self.send(text)
        expect(self.answers()).to_have_count(count + 1)
        return self.answer_done()

    @contextmanager
    def branch_saved(self) -> Iterator[None]:
        """Around an action that changes the branch shown: wait until the page told the server
        (so that a reload shows the same branch)."""
        with self.page.expect_response(is_patch):
            yield

    def conversation_id(self) -> str:
        expect(self.page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}$"))
        return self.page.url.rsplit("/", 1)[1]

    def sidebar_titles(self) -> Locator:
        return self.page.get_by_test_id("conversation-title")

    def no_horizontal_scroll(self) -> bool:
        result: bool = self.page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
        return result

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


class Tabs:
    """The browser contexts of one test. Every console error and uncaught exception on any of
    their pages is kept, and the test fails if there were any that it did not expect."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: list[BrowserContext] = []
        self.problems: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    def open(self, viewport: ViewportSize = DESKTOP, **options: Any) -> Tab:
        context = self.browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        context.on("console", self._console)
        page = context.new_page()
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        return Tab(page, self.base_url)

    def expect_console_error(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            self.problems.append(
                f"console error at {where.get('url')}:{where.get('lineNumber')}: {message.text}"
            )

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(e.search(p) for e in self.expected)]

    def close(self) -> None:
        while self.contexts:
            self.contexts.pop().close()
