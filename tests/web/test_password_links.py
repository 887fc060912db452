"""Password links (invites and resets) end with the password, the account or its standing:
a link that leaked never takes over an account whose owner has moved on, nor a new account made
later with the same address."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from lamplighter.credentials import hash_key
from lamplighter.store.accounts import Accounts
from lamplighter.store.models import Invite, User, utcnow
from tests.conftest import LiveServer
from tests.web.browser import Tabs
from tests.web.conftest import Browserless, Person, form_token, new_person

GONE = "This link is not valid any more"


def _elsewhere(server: LiveServer) -> Browserless:
    """A client at an address of its own (X-Forwarded-For, which the test server trusts from
    127.0.0.1), so the logins here count against no other test's address."""
    web = Browserless(server.base_url)
    web.http.headers["x-forwarded-for"] = f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.9"
    return web


def _use(server: LiveServer, token: str, password: str) -> tuple[int, int, str]:
    """Open a link in a fresh browser and set ``password`` with it, as its holder would: the
    page's status, the form's status, and whom the browser is logged in as then ('' if nobody)."""
    with httpx.Client(base_url=server.base_url) as http:
        page = http.get(f"/invite/{token}")
        csrf = form_token(page.text) if page.status_code == 200 else ""
        posted = http.post(f"/invite/{token}", data={"password": password, "csrf_token": csrf})
        me = http.get("/api/me")
        return page.status_code, posted.status_code, me.json()["email"] if me.is_success else ""


def _refused(server: LiveServer, token: str, person: Person) -> None:
    """The link opens nothing and sets nothing: the owner's password still logs in."""
    page, posted, who = _use(server, token, f"hijacked {uuid.uuid4().hex}")
    assert (page, posted, who) == (404, 404, "")
    assert GONE in httpx.get(f"{server.base_url}/invite/{token}").text
    web = _elsewhere(server)
    assert web.login(person).status_code == 303
    web.close()


def _add_link(server: LiveServer, email: str, token: str, made: Callable[[User], datetime]) -> None:
    """A live link for ``email``'s account, made at ``made(account)``, put in the store as
    another replica (or an older version) would have."""

    async def add(services: Any) -> None:
        async with services.db.transaction() as session:
            user = await Accounts(session).user_by_email(email)
            assert user is not None
            when = made(user)
            session.add(
                Invite(
                    token_hash=hash_key(token),
                    email=email,
                    plan="roomy",
                    created_at=when,
                    expires_at=when + timedelta(days=7),
                )
            )

    server.call(add)


def test_changing_the_password_in_settings_ends_an_outstanding_reset_link(
    server: LiveServer,
) -> None:
    person = new_person(server)
    leaked = server.call(lambda s: s.web.password_link(person.email))
    web = _elsewhere(server)
    assert web.login(person).status_code == 303
    changed = web.api(
        "POST",
        "/me/password",
        json={"current_password": person.password, "new_password": "Crimson-Otter-Violin-55"},
    )
    assert changed.status_code == 200, changed.text
    web.close()
    _refused(server, leaked, Person(person.email, "Crimson-Otter-Violin-55"))


def test_a_completed_link_ends_the_accounts_other_links(server: LiveServer) -> None:
    """Two links live at once (made together on two replicas, say): setting the password with
    one ends the other."""
    person = new_person(server)
    first = server.call(lambda s: s.web.password_link(person.email))
    second = f"second-{uuid.uuid4().hex}"
    _add_link(server, person.email, second, lambda _: utcnow())
    assert _use(server, first, "Amber-Heron-Sextant-42") == (200, 303, person.email)
    _refused(server, second, Person(person.email, "Amber-Heron-Sextant-42"))


def test_suspending_an_account_ends_its_links_for_good(server: LiveServer) -> None:
    person = new_person(server)
    leaked = server.call(lambda s: s.web.password_link(person.email))
    server.call(lambda s: s.accounts.suspend(person.email, "looked into", until=None))
    server.call(lambda s: s.accounts.restore(person.email))
    _refused(server, leaked, person)


def test_a_link_never_sets_the_password_of_a_new_account_with_the_same_address(
    server: LiveServer,
) -> None:
    """An unused invite of a deleted account, opened once a new account has that address."""
    email = f"dave-{uuid.uuid4().hex[:12]}@example.org"
    leaked = server.call(lambda s: s.web.invite(email, "roomy"))
    server.call(lambda s: s.accounts.delete_user(email))
    new_owner = Person(email, "Amber-Heron-Sextant-42")
    server.call(lambda s: s.accounts.create_user(email, password=new_owner.password))
    _refused(server, leaked, new_owner)


def test_a_link_older_than_the_account_at_its_address_sets_nothing(server: LiveServer) -> None:
    """A link of an account deleted before links went with their account (its row is still
    in the store) is refused too."""
    person = new_person(server)
    stale = f"stale-{uuid.uuid4().hex}"
    _add_link(server, person.email, stale, lambda user: user.created_at - timedelta(days=1))
    _refused(server, stale, person)


def test_a_links_page_sends_its_token_to_nobody_in_a_referer(
    server: LiveServer, tabs: Tabs
) -> None:
    """The page a link opens asks for its styles and script, and its form posts back: none of
    those requests carries the link in its Referer, which logs (nginx's, a proxy's) keep."""
    person = new_person(server)
    token = server.call(lambda s: s.web.password_link(person.email))
    tab = tabs.open()
    referers: list[str] = []
    tab.page.on("request", lambda request: referers.append(request.headers.get("referer", "")))
    tab.page.goto(f"{server.base_url}/invite/{token}")
    tab.page.get_by_label("Password", exact=True).fill("Quartz-Badger-Lantern-73")
    with tab.page.expect_navigation():
        tab.page.get_by_test_id("invite-submit").click()
    assert len(referers) >= 3  # the page, its styles and script, the form's post and beyond
    assert not [referer for referer in referers if token in referer]
