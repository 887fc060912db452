"""The Settings page: a person changes their password, manages their API keys, downloads their
data, deletes every chat or their whole account, all by themselves, in a real Chromium and over
the page's JSON API, and never touches anyone else's."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import expect

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.flywheel.export import Exporter
from lamplighter.settings import Settings
from lamplighter.store.models import utcnow
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.web.browser import PHONE, Tab, Tabs
from tests.web.conftest import Browserless, Person, new_person

NEW_PASSWORD = "a brand new lantern wick"


def _elsewhere(server: LiveServer) -> Browserless:
    """A client at an address of its own (X-Forwarded-For, which the test server trusts from
    127.0.0.1): the wrong passwords these tests send count against it, not against the
    address every other test logs in from."""
    web = Browserless(server.base_url)
    web.http.headers["x-forwarded-for"] = f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.7"
    return web


def _logged_in(server: LiveServer, person: Person) -> Browserless:
    web = _elsewhere(server)
    assert web.login(person).status_code == 303
    return web


def _settings(tab: Tab) -> None:
    tab.goto("/settings")
    expect(tab.page.get_by_role("heading", name="Settings", exact=True)).to_be_visible()
    expect(tab.page.get_by_test_id("key-list")).to_have_attribute("data-loaded", "true")


def test_settings_page_changes_the_password_manages_keys_and_downloads_the_data(
    server: LiveServer, tabs: Tabs, tab: Tab, person: Person
) -> None:
    tab.echo("Remember the lighthouse keeper")
    elsewhere = _logged_in(server, person)  # another browser, logged in as the same person
    _settings(tab)
    page = tab.page

    # 1. Password: the new one works, the old one and every other session do not.
    page.get_by_test_id("current-password").fill(person.password)
    page.get_by_test_id("new-password").fill(NEW_PASSWORD)
    page.get_by_test_id("password-submit").click()
    expect(page.get_by_test_id("password-done")).to_contain_text("Password changed")
    assert elsewhere.api("GET", "/me").status_code == 401
    elsewhere.close()
    again = tabs.open()
    again.login(Person(person.email, NEW_PASSWORD))
    refused = _elsewhere(server)
    assert refused.login(person).status_code == 401
    refused.close()

    # 2. API keys, in the same tab (its new session's CSRF token came with the answer): the
    # secret is shown once and works with the openai SDK until it is revoked.
    page.get_by_test_id("key-name").fill("laptop")
    page.get_by_test_id("key-create").click()
    secret = page.get_by_test_id("key-secret")
    expect(secret).to_have_value(re.compile(r"^ll-"))
    key = secret.input_value()
    client = server.client(key)
    assert (
        client.chat.completions.create(model=SCRIPTED, messages=[{"role": "user", "content": "hi"}])
        .choices[0]
        .message.content
        == "You said: hi"
    )
    item = page.get_by_test_id("api-key").filter(has_text="laptop")
    expect(item).to_contain_text(key[:10])
    item.get_by_test_id("key-revoke").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("settings-confirm")).to_be_hidden()
    expect(item.get_by_test_id("key-status")).to_have_text("revoked")
    tab.screenshot("settings-desktop.png")
    with pytest.raises(openai.AuthenticationError) as revoked:
        client.models.list()
    assert revoked.value.code == "revoked_api_key"

    # 3. The download: one JSON file with the conversation, its answer and the key (no secret).
    with page.expect_download() as download:
        page.get_by_test_id("export").click()
    path = download.value.path()
    assert download.value.suggested_filename.startswith("lamplighter-data-")
    data = json.loads(Path(path).read_text())
    assert data["account"]["email"] == person.email
    chats = {c["title"]: [m["content"] for m in c["messages"]] for c in data["conversations"]}
    assert chats["Remember the lighthouse keeper"] == [
        "Remember the lighthouse keeper",
        "You said: Remember the lighthouse keeper",
    ]
    assert ["hi", "You said: hi"] in chats.values()  # the API's conversation, through the key
    assert [k["name"] for k in data["api_keys"]] == ["laptop"]
    assert key not in json.dumps(data)


def test_settings_page_fits_a_phone_in_the_dark_and_works_from_the_keyboard(
    tabs: Tabs, person: Person
) -> None:
    phone = tabs.open(viewport=PHONE, color_scheme="dark")
    phone.login(person)
    _settings(phone)
    page = phone.page
    assert phone.no_horizontal_scroll()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(33, 33, 33)"  # app.css's dark --bg
    phone.screenshot("settings-phone-dark.png")
    # Keyboard only: the delete button opens its dialog, Escape closes it, focus comes back.
    button = page.get_by_test_id("delete-chats")
    button.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_test_id("settings-confirm")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("confirm-cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(button).to_be_focused()


def test_settings_needs_a_login_and_comes_back_after_it(server: LiveServer) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        response = http.get("/settings")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Fsettings"
        assert http.get("/api/me/keys").status_code == 401


def test_a_wrong_current_password_or_a_weak_new_one_is_refused(
    server: LiveServer, person: Person
) -> None:
    web = _logged_in(server, person)
    wrong = web.api(
        "POST",
        "/me/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "current_password"
    assert wrong.json()["error"]["code"] == "wrong_password"
    weak = web.api(
        "POST",
        "/me/password",
        json={"current_password": person.password, "new_password": "password1"},
    )
    assert weak.status_code == 400
    assert weak.json()["error"]["param"] == "new_password"
    assert "too easy to guess" in weak.json()["error"]["message"]
    no_csrf = web.http.post(
        "/api/me/password",
        json={"current_password": person.password, "new_password": NEW_PASSWORD},
    )
    assert no_csrf.status_code == 403 and no_csrf.json()["error"]["code"] == "csrf_failed"
    # Nothing changed: the old password still logs in, and this session still works.
    assert web.api("GET", "/me").status_code == 200
    check = _logged_in(server, person)
    check.close()
    web.close()


def test_a_person_cannot_revoke_or_see_another_persons_key(
    server: LiveServer, web: Browserless, stranger: Browserless
) -> None:
    made = web.api("POST", "/me/keys", json={"name": "mine"})
    assert made.status_code == 201, made.text
    key = made.json()
    refused = stranger.api("DELETE", f"/me/keys/{key['id']}")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "api_key_not_found"
    assert stranger.api("GET", "/me/keys").json()["data"] == []
    [listed] = web.api("GET", "/me/keys").json()["data"]
    assert listed["status"] == "live" and "secret" not in listed
    models = server.client(key["secret"]).models.list()
    assert SCRIPTED in [model.id for model in models]
    [used] = web.api("GET", "/me/keys").json()["data"]
    assert used["last_used_at"] is not None
    assert web.api("DELETE", f"/me/keys/{key['id']}").status_code == 204
    assert web.api("DELETE", f"/me/keys/{key['id']}").status_code == 404  # already revoked
    bad = web.api("POST", "/me/keys", json={"name": "x", "expires_days": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "expires_days"


def _exported_conversations(server: LiveServer, out: Path, since: Any = None) -> set[str]:
    """The conversation ids an ``export conversations`` run writes (everyone consents)."""
    server.call(
        lambda s: Exporter(s.db, consent_default=True).run("conversations", out, since=since)
    )
    index = (out / "index.jsonl").read_text().splitlines()
    return {json.loads(line)["conversation_id"] for line in index}


def test_deleting_all_chats_deletes_them_everywhere_exports_included(
    server: LiveServer, web: Browserless, stranger: Browserless, tmp_path: Path
) -> None:
    started = utcnow()
    # Questions no other test asks: the export leaves out prompts asked too often, in the
    # whole store, and short exchanges.
    asked = (
        "Which lighthouse on the Cornish coast was the first to use a rotating lens",
        "How did the keepers on the Bell Rock pass their long winter evenings",
    )
    mine = {web.chat(content=text)[0][1]["conversation_id"] for text in asked}
    theirs_asked = stranger.chat(content="What did a relief boat usually carry out to Skerryvore")
    theirs = theirs_asked[0][1]["conversation_id"]
    assert mine | {theirs} <= _exported_conversations(server, tmp_path / "before")

    answer = web.api("DELETE", "/me/conversations")
    assert answer.status_code == 200 and answer.json() == {"deleted": 2}
    assert web.api("GET", "/conversations").json()["data"] == []
    for conversation in mine:
        assert web.api("GET", f"/conversations/{conversation}").status_code == 404
    exported = _exported_conversations(server, tmp_path / "after")
    assert not mine & exported and theirs in exported
    _exported_conversations(server, tmp_path / "since", since=started)
    deletions = (tmp_path / "since" / "deletions.jsonl").read_text().splitlines()
    assert mine <= {json.loads(line).get("conversation_id") for line in deletions}
    assert stranger.api("GET", f"/conversations/{theirs}").status_code == 200


def test_deleting_the_account_logs_out_and_the_login_fails(server: LiveServer) -> None:
    person = new_person(server)
    web = _logged_in(server, person)
    web.chat(content="soon gone")
    wrong = web.api("DELETE", "/me", json={"password": "not my password"})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_password"
    assert web.api("GET", "/me").status_code == 200
    assert web.api("DELETE", "/me", json={}).status_code == 400  # no password, no deletion

    deleted = web.api("DELETE", "/me", json={"password": person.password})
    assert deleted.status_code == 204
    assert web.api("GET", "/me").status_code == 401
    assert web.http.get("/settings").headers["location"].startswith("/login")
    web.close()
    again = _elsewhere(server)
    assert again.login(person).status_code == 401
    again.close()
    users = server.call(lambda s: s.accounts.list_users())
    assert person.email not in {user.email for user in users}


@pytest.fixture(scope="module")
def lone_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A fresh instance whose only admin is the one it made at its first start."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    settings = make_settings(tmp_path_factory.mktemp("lone-admin"), embedded_engine=False)
    with LiveServer(settings, backends) as live:
        yield live


def test_the_last_admin_cannot_delete_their_account(lone_admin: LiveServer) -> None:
    admin = Person(lone_admin.bootstrap.email, lone_admin.bootstrap.password)
    web = _logged_in(lone_admin, admin)
    refused = web.api("DELETE", "/me", json={"password": admin.password})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "last_admin"
    assert web.api("GET", "/me").json()["is_admin"] is True
    web.close()


def test_guessing_the_password_through_settings_is_throttled_like_logins(
    server: LiveServer,
) -> None:
    person = new_person(server)
    web = _logged_in(server, person)
    for attempt in range(5):
        guess = web.api("DELETE", "/me", json={"password": f"guess number {attempt}"})
        assert guess.status_code == 400
    locked = web.api("DELETE", "/me", json={"password": person.password})
    assert locked.status_code == 429 and "retry-after" in locked.headers
    assert web.api("GET", "/me").status_code == 200  # still there: nothing was checked
    web.close()
