"""API keys: scopes, expiry, rotation with a grace period, and keys pasted into prompts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from lamplighter.cli import app
from tests.conftest import SCRIPTED, LiveServer


def _admin(server: LiveServer) -> str:
    email = f"keys-{uuid.uuid4().hex[:8]}@example.org"
    server.call(lambda s: s.accounts.create_user(email, admin=True, plan="roomy"))
    return email


def _get_stats(server: LiveServer, key: str) -> httpx.Response:
    return httpx.get(
        server.base_url + "/api/admin/stats", headers={"authorization": f"Bearer {key}"}
    )


def test_scopes_bound_what_a_key_may_do(server: LiveServer) -> None:
    email = _admin(server)

    def key(*scopes: str) -> str:
        created = server.call(lambda s: s.accounts.create_key(email, scopes=list(scopes) or None))
        return str(created.secret)

    chat_only, admin_only, default = key("chat"), key("admin"), key()
    assert _get_stats(server, chat_only).status_code == 403
    assert _get_stats(server, chat_only).json()["error"]["code"] == "insufficient_scope"
    assert _get_stats(server, admin_only).status_code == 200
    assert _get_stats(server, default).status_code == 200  # an admin's default includes admin
    with pytest.raises(openai.PermissionDeniedError, match="lacks the 'chat' scope"):
        server.client(admin_only).models.list()
    answer = server.client(chat_only).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "scoped"}]
    )
    assert answer.choices[0].message.content == "You said: scoped"


def test_only_admins_get_the_admin_scope(server: LiveServer) -> None:
    email = f"plain-{uuid.uuid4().hex[:8]}@example.org"
    server.call(lambda s: s.accounts.create_user(email))
    with pytest.raises(Exception, match="not an admin"):
        server.call(lambda s: s.accounts.create_key(email, scopes=["admin"]))
    with pytest.raises(Exception, match="scopes must be some of"):
        server.call(lambda s: s.accounts.create_key(email, scopes=["root"]))
    created = server.call(lambda s: s.accounts.create_key(email))
    keys = server.call(lambda s: s.accounts.keys_of(email))
    assert [k.scopes for k in keys if k.id == created.id] == [["chat", "feedback"]]


def test_an_expired_key_is_refused_with_a_clear_error(server: LiveServer) -> None:
    email = _admin(server)
    created = server.call(
        lambda s: s.accounts.create_key(email, expires_in=timedelta(microseconds=1))
    )
    with pytest.raises(openai.AuthenticationError, match="expired") as caught:
        server.client(created.secret).models.list()
    assert caught.value.code == "expired_api_key"


def test_rotation_gives_a_new_key_and_the_old_one_a_grace_period(server: LiveServer) -> None:
    email = _admin(server)
    old = server.call(lambda s: s.accounts.create_key(email, "ci", scopes=["chat"]))
    new = server.call(lambda s: s.accounts.rotate_key(old.id, timedelta(hours=1)))
    assert server.client(old.secret).models.list().data  # still inside the grace period
    assert server.client(new.secret).models.list().data
    keys = {k.id: k for k in server.call(lambda s: s.accounts.keys_of(email))}
    assert keys[new.id].name == "ci" and keys[new.id].scopes == ["chat"]
    assert keys[old.id].expires_at is not None and keys[new.id].expires_at is None
    ended = server.call(lambda s: s.accounts.rotate_key(new.id, timedelta(0)))
    with pytest.raises(openai.AuthenticationError):
        server.client(new.secret).models.list()
    assert server.client(ended.secret).models.list().data


def test_a_key_pasted_into_a_prompt_is_detected(server: LiveServer) -> None:
    email = _admin(server)
    leaked = server.call(lambda s: s.accounts.create_key(email, "leaked"))
    caller = server.call(lambda s: s.accounts.create_key(email, "caller"))
    response = server.client(caller.secret).chat.completions.with_raw_response.create(
        model=SCRIPTED,
        messages=[{"role": "user", "content": f"why does {leaked.secret} not work?"}],
    )
    warning = response.headers["x-lamplighter-warning"]
    assert leaked.secret[:10] in warning and leaked.secret not in warning
    assert "rotate it" in warning  # the caller's own key: a warning, it still works
    assert server.client(leaked.secret).models.list().data
    clean = server.client(caller.secret).chat.completions.with_raw_response.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "ll-" + "x" * 43}]
    )
    assert "x-lamplighter-warning" not in clean.headers  # key-shaped, but no such key


def test_keys_cli_create_list_rotate(tmp_path: Path) -> None:
    env = {"LAMPLIGHTER_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    assert (
        runner.invoke(app, ["users", "create", "ops@example.org", "--admin"], env=env).exit_code
        == 0
    )
    made = runner.invoke(
        app,
        ["keys", "create", "ops@example.org", "--scope", "chat", "--expires-days", "30"],
        env=env,
    )
    assert made.exit_code == 0, made.output
    key_id = made.output.split()[2]
    listed = runner.invoke(app, ["keys", "list", "ops@example.org"], env=env).output
    assert key_id in listed and "chat" in listed and "live until" in listed
    rotated = runner.invoke(app, ["keys", "rotate", key_id, "--grace-hours", "2"], env=env)
    assert rotated.exit_code == 0 and f"replaces {key_id}" in rotated.output
    assert (
        len(runner.invoke(app, ["keys", "list", "ops@example.org"], env=env).output.splitlines())
        == 2
    )
    bad = runner.invoke(app, ["keys", "create", "ops@example.org", "--scope", "root"], env=env)
    assert bad.exit_code == 1 and "scopes must be some of" in bad.output


def test_a_key_pasted_into_the_web_chat_is_detected(server: LiveServer) -> None:
    from tests.web.conftest import Browserless, new_person

    person = new_person(server)
    leaked = server.call(lambda s: s.accounts.create_key(person.email, "leaked"))
    web = Browserless(server.base_url)
    web.login(person)
    start = web.chat(content=f"my key is {leaked.secret}")[0][1]
    assert leaked.secret[:10] in start["warning"]
    assert web.chat(content="nothing secret")[0][1]["warning"] is None
    web.close()


def test_another_accounts_key_pasted_into_a_prompt_is_revoked(server: LiveServer) -> None:
    victim = _admin(server)
    stolen = server.call(lambda s: s.accounts.create_key(victim, "stolen"))
    _, thief = server.new_user(plan="roomy")
    response = server.client(thief).chat.completions.with_raw_response.create(
        model=SCRIPTED, messages=[{"role": "user", "content": f"try {stolen.secret}"}]
    )
    assert "of another account was revoked" in response.headers["x-lamplighter-warning"]
    with pytest.raises(openai.AuthenticationError):
        server.client(stolen.secret).models.list()
    [key] = [k for k in server.call(lambda s: s.accounts.keys_of(victim)) if k.id == stolen.id]
    assert key.revoked_at is not None


def test_a_refused_key_is_told_why(server: LiveServer) -> None:
    """A revoked key, or one whose account is suspended or banned, says so (with what its holder
    can do), not "Incorrect API key" and how to make one."""
    from datetime import UTC, datetime

    def refusal(key: str) -> openai.AuthenticationError:
        with pytest.raises(openai.AuthenticationError) as refused:
            server.client(key).models.list()
        return refused.value

    email, revoked = server.new_user(plan="roomy")
    [key] = server.call(lambda s: s.accounts.keys_of(email))
    server.call(lambda s: s.accounts.revoke_key(key.id))
    error = refusal(revoked)
    assert error.code == "revoked_api_key" and "was revoked at" in error.message

    email, secret = server.new_user(plan="roomy")
    until = datetime.now(UTC) + timedelta(hours=2)
    server.call(lambda s: s.accounts.suspend(email, "flood", until=until))
    error = refusal(secret)
    assert error.code == "account_suspended" and "suspended until" in error.message
    assert "flood" not in error.message  # the reason is the administrators'
    server.call(lambda s: s.accounts.suspend(email, "fraud", until=None, banned=True))
    assert refusal(secret).code == "account_deactivated"
    server.call(lambda s: s.accounts.restore(email))
    assert server.client(secret).models.list().data

    error = refusal("ll-" + "x" * 40)
    assert error.code == "invalid_api_key" and "Create one with" in error.message
