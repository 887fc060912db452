"""Fixtures for the web chat: people with passwords, logged-in HTTP sessions, admins, and a
Chromium for the browser tests."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import SCRIPTED, LiveServer
from tests.web.browser import CHROMIUM, LAUNCH_ARGS, Tab, Tabs

PASSWORD = "correct horse battery staple"


@dataclass
class Person:
    email: str
    password: str


def new_person(server: LiveServer, plan: str = "roomy") -> Person:
    email = f"web-{uuid.uuid4().hex[:12]}@example.org"
    server.call(lambda s: s.accounts.create_user(email, password=PASSWORD, plan=plan))
    return Person(email, PASSWORD)


def add_chats(server: LiveServer, person: Person, n: int) -> list[str]:
    """``n`` empty chats of ``person``'s, titled "Chat 000" (the newest) to "Chat n-1", a minute
    apart; their titles, newest first."""
    from datetime import timedelta

    from lamplighter.store.accounts import Accounts
    from lamplighter.store.models import Conversation, utcnow

    titles = [f"Chat {i:03d}" for i in range(n)]

    async def add(services: Any) -> None:
        async with services.db.transaction() as session:
            user = await Accounts(session).user_by_email(person.email)
            assert user is not None
            now = utcnow()
            for i, title in enumerate(titles):
                when = now - timedelta(minutes=i)
                session.add(
                    Conversation(user_id=user.id, title=title, created_at=when, updated_at=when)
                )

    server.call(add)
    return titles


def form_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the form has no CSRF field"
    return found.group(1)


class Browserless:
    """What the chat page does, over plain HTTP: log in with the form, then call the JSON API
    with the session cookie and the page's CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=120, follow_redirects=False)
        self.csrf = ""

    def login(self, person: Person) -> httpx.Response:
        token = form_token(self.http.get("/login").text)
        response = self.http.post(
            "/login",
            data={"email": person.email, "password": person.password, "csrf_token": token},
        )
        if response.status_code == 303:
            page = self.http.get("/").text
            found = re.search(r'name="csrf-token" content="([^"]+)"', page)
            assert found, "the chat page carries no CSRF token"
            self.csrf = found.group(1)
        return response

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"x-csrf-token": self.csrf} if method != "GET" else {}
        return self.http.request(method, "/api" + path, headers=headers, **kwargs)

    def chat(self, **body: Any) -> list[tuple[str, Any]]:
        """POST /api/chat and read the whole event stream: [(event, payload), ...]."""
        body.setdefault("model", "scripted-echo")
        events: list[tuple[str, Any]] = []
        with self.http.stream(
            "POST", "/api/chat", json=body, headers={"x-csrf-token": self.csrf}
        ) as response:
            if response.status_code != 200:
                response.read()
                raise AssertionError(f"{response.status_code}: {response.text}")
            name = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, json.loads(line.removeprefix("data: "))))
        return events

    def tree(self, conversation_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/conversations/{conversation_id}")
        assert response.status_code == 200, response.text
        tree: dict[str, Any] = response.json()
        return tree

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def person(server: LiveServer) -> Person:
    return new_person(server)


@pytest.fixture
def web(server: LiveServer, person: Person) -> Iterator[Browserless]:
    session = Browserless(server.base_url)
    assert session.login(person).status_code == 303
    yield session
    session.close()


@pytest.fixture
def stranger(server: LiveServer) -> Iterator[Browserless]:
    """Another user, logged in: must never see the first one's data."""
    session = Browserless(server.base_url)
    assert session.login(new_person(server)).status_code == 303
    yield session
    session.close()


def admin_person(server: LiveServer) -> Person:
    email = f"admin-{uuid.uuid4().hex[:10]}@example.org"
    server.call(lambda s: s.accounts.create_user(email, password=PASSWORD, admin=True))
    return Person(email, PASSWORD)


@pytest.fixture
def admin(server: LiveServer) -> Person:
    return admin_person(server)


@pytest.fixture
def operator(server: LiveServer, admin: Person) -> Iterator[Browserless]:
    """An admin over plain HTTP: to set things up and to cross-check what pages show."""
    session = Browserless(server.base_url)
    assert session.login(admin).status_code == 303
    yield session
    session.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, one per test module; missing, it fails loudly (`make test` installs
    it)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(`make test` installs it, or `apt-get install chromium`)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def tabs(browser: Browser, server: LiveServer) -> Iterator[Tabs]:
    """Fresh browser contexts for one test; the test fails if any page logged an error."""
    opened = Tabs(browser, server.base_url)
    yield opened
    opened.close()
    problems = opened.unexpected()
    assert not problems, "the page logged errors:\n" + "\n".join(problems)


@pytest.fixture
def tab(tabs: Tabs, person: Person) -> Tab:
    """A desktop tab, logged in as ``person``, talking to scripted-echo (modules that need
    another kind of tab define their own)."""
    opened = tabs.open()
    opened.login(person)
    opened.pick_model(SCRIPTED)
    return opened


def limited_tab(tabs: Tabs, server: LiveServer, requests_per_minute: int) -> Tab:
    """A desktop tab of a new person on a plan of their own with that many requests a minute
    (and no cache), talking to scripted-echo, its page clock installed (running at the real
    pace until paused)."""
    plan = f"limited-{uuid.uuid4().hex[:6]}"
    limits = {"requests_per_minute": requests_per_minute, "cache_ttl_s": 0}
    server.call(lambda s: s.plans.put(plan, limits, create=True))
    opened = tabs.open()
    opened.page.clock.install()
    opened.login(new_person(server, plan=plan))
    opened.pick_model(SCRIPTED)
    return opened
