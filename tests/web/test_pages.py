"""The server-rendered pages over plain HTTP: a chat's link opened logged out, or a session that
ended, comes back to that chat after logging in (and to nowhere but this site), saying why the
login form is shown."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from lamplighter.web.pages import next_path
from tests.conftest import LiveServer
from tests.web.conftest import Browserless, Person, form_token

# Each is another site, or a way browsers read as one, or no path at all.
ELSEWHERE = [
    "//evil.example",
    "//evil.example/c/1",
    "///evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    " /c/1",
    "https://evil.example/",
    "http:/evil.example",
    "javascript:alert(1)",
    "evil.example",
    "c/1",
    "",
]


@pytest.mark.parametrize("value", ELSEWHERE)
def test_a_next_page_elsewhere_is_refused_for_the_home_page(value: str) -> None:
    assert next_path(value) == "/"


@pytest.mark.parametrize("value", ["/", "/c/0190", "/c/0190?x=1", "/admin/users", "/a%2F%2Fb"])
def test_a_next_page_on_this_site_is_kept(value: str) -> None:
    assert next_path(value) == value


def test_a_chats_link_opened_logged_out_comes_back_to_it_after_logging_in(
    server: LiveServer, person: Person, web: Browserless
) -> None:
    chat = web.chat(content="keep my place")[0][1]["conversation_id"]
    with httpx.Client(base_url=server.base_url) as http:
        opened = http.get(f"/c/{chat}")
        assert opened.status_code == 303
        where = urlsplit(opened.headers["location"])
        assert where.path == "/login"
        assert parse_qs(where.query) == {"next": [f"/c/{chat}"]}  # no cookie: nothing ended

        page = http.get(opened.headers["location"])
        assert f'name="next" value="/c/{chat}"' in page.text
        assert 'data-testid="session-ended"' not in page.text
        logged_in = http.post(
            "/login",
            data={
                "email": person.email,
                "password": person.password,
                "csrf_token": form_token(page.text),
                "next": f"/c/{chat}",
            },
        )
        assert logged_in.status_code == 303
        assert logged_in.headers["location"] == f"/c/{chat}"
        # Logged in already, the login page sends on to the page asked for.
        again = http.get("/login", params={"next": f"/c/{chat}"})
        assert again.status_code == 303 and again.headers["location"] == f"/c/{chat}"


def test_a_login_never_sends_to_another_site(server: LiveServer, person: Person) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        for value in ELSEWHERE:
            page = http.get("/login", params={"next": value})
            assert 'name="next"' not in page.text, value
        token = form_token(page.text)
        logged_in = http.post(
            "/login",
            data={
                "email": person.email,
                "password": person.password,
                "csrf_token": token,
                "next": "//evil.example/phish",
            },
        )
        assert logged_in.status_code == 303 and logged_in.headers["location"] == "/"
        bounced = http.get("/login", params={"next": "https://evil.example/"})
        assert bounced.status_code == 303 and bounced.headers["location"] == "/"


def test_a_session_that_ended_says_so_on_the_login_page(server: LiveServer, person: Person) -> None:
    session = Browserless(server.base_url)
    assert session.login(person).status_code == 303
    chat = f"/c/{uuid.uuid4()}"
    ended = session.http.post(
        "/logout", params={"everywhere": "1"}, data={"csrf_token": session.csrf}
    )
    assert ended.status_code == 303
    # Another device's cookie, still sent after "Log out everywhere": the session ended.
    session.http.cookies.set("lamplighter_session", "a-session-that-ended")
    opened = session.http.get(chat)
    where = urlsplit(opened.headers["location"])
    assert parse_qs(where.query) == {"session": ["ended"], "next": [chat]}
    page = session.http.get(opened.headers["location"])
    assert "Your session ended; log in again." in page.text
    # A failed login says what failed, not that again.
    wrong = session.http.post(
        "/login",
        data={"email": person.email, "password": "wrong", "csrf_token": form_token(page.text)},
    )
    assert "Your session ended" not in wrong.text
    session.close()
