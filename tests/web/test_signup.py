"""Signing up, on a server whose operator opened it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.web.conftest import form_token


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    settings = make_settings(
        tmp_path_factory.mktemp("open"), signups="open", signup_plan="plus", embedded_engine=False
    )
    with LiveServer(settings, backends) as live:
        yield live


def _signup(http: httpx.Client, email: str, password: str) -> httpx.Response:
    token = form_token(http.get("/signup").text)
    return http.post("/signup", data={"email": email, "password": password, "csrf_token": token})


def test_signup_creates_an_account_on_the_signup_plan(open_server: LiveServer) -> None:
    with httpx.Client(base_url=open_server.base_url) as http:
        assert 'href="/signup"' in http.get("/login").text
        response = _signup(http, "New.Person@Example.org", "a good long password")
        assert response.status_code == 303 and response.headers["location"] == "/"
        me = http.get("/api/me").json()
    assert me["email"] == "new.person@example.org"
    assert me["plan"] == "plus"
    assert me["models"] == [SCRIPTED]


def test_signup_refuses_short_passwords_and_does_not_reveal_taken_emails(
    open_server: LiveServer,
) -> None:
    with httpx.Client(base_url=open_server.base_url) as http:
        short = _signup(http, "short@example.org", "1234567")
        assert short.status_code == 400 and "at least 8 characters" in short.text
        assert _signup(http, "taken@example.org", "a good long password").status_code == 303
    with httpx.Client(base_url=open_server.base_url) as http:
        again = _signup(http, "taken@example.org", "another long password")
    assert again.status_code == 400
    assert "already exists" not in again.text
    assert "lamplighter_session" not in again.headers.get("set-cookie", "")


@pytest.mark.parametrize("password", ["password123", "qwertyuiop", "iloveyou1", "newcomer2026"])
def test_signup_refuses_common_and_guessable_passwords(
    open_server: LiveServer, password: str
) -> None:
    with httpx.Client(base_url=open_server.base_url) as http:
        response = _signup(http, "newcomer2026@example.org", password)
    assert response.status_code == 400
    assert "too easy to guess" in response.text
    assert "lamplighter_session" not in response.headers.get("set-cookie", "")
