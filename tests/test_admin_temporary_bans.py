"""An operator sees the abuse scores' temporary ban on a user and lifts it with restore, on every
replica (two servers over one PostgreSQL and one Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.fleet import REDIS_URL, needs_redis, wait_for
from tests.test_cli import cli

BODY = {"model": SCRIPTED, "messages": [{"role": "user", "content": "page 1"}]}


def _replica(data_dir: Path, postgres_url: str) -> LiveServer:
    """A replica whose [abuse] threshold is low: four early returns ban for a minute."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    data_dir.mkdir()
    config = data_dir / "lamplighter.toml"
    config.write_text(
        "[plans.trickle]\nrequests_per_minute = 1\n\n[abuse]\nthreshold = 4\nban_s = 60\n"
    )
    settings = make_settings(
        data_dir,
        config=config,
        embedded_engine=False,
        database_url=postgres_url,
        redis_url=REDIS_URL,
    )
    return LiveServer(settings, backends)


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    with ExitStack() as stack:
        a, b = (stack.enter_context(_replica(tmp_path / name, postgres_url)) for name in "ab")
        yield a, b


def _ask(server: LiveServer, key: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-forwarded-for": "203.0.113.90"}
    return httpx.post(server.base_url + "/v1/chat/completions", json=BODY, headers=headers)


@needs_redis
def test_a_temporary_ban_is_shown_and_restore_lifts_it_on_every_replica(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    email, key = a.new_user(plan="trickle")
    _, admin_key = a.new_user(admin=True)
    admin = {"authorization": f"Bearer {admin_key}"}
    assert _ask(b, key).status_code == 200  # b serves the user too
    statuses = [_ask(a, key).status_code for _ in range(8)]  # never waiting as told
    assert statuses[-1] == 403, statuses

    def shown() -> dict[str, object] | None:
        user = httpx.get(f"{b.base_url}/api/admin/users/{email}", headers=admin).json()["user"]
        ban: dict[str, object] | None = user["temporary_ban"]
        return ban

    ban = wait_for(shown, 10, "the ban started on a to show on b")
    assert ban["reason"] == "rate_limited" and 0 < float(str(ban["seconds_left"])) <= 60
    assert _ask(b, key).status_code == 403  # b holds it too

    restored = httpx.post(f"{b.base_url}/api/admin/users/{email}/restore", json={}, headers=admin)
    assert restored.status_code == 200 and restored.json()["temporary_ban_lifted"] is True
    # On a, where the ban started, the user is let in again: at most refused for the rate (429).
    wait_for(lambda: _ask(a, key).status_code != 403 or None, 10, "a to lift the ban")
    assert shown() is None


@needs_redis
def test_the_restore_command_lifts_a_temporary_ban_on_every_replica(
    replicas: tuple[LiveServer, LiveServer], postgres_url: str
) -> None:
    a, b = replicas
    email, key = a.new_user(plan="trickle")
    statuses = [_ask(a, key).status_code for _ in range(9)]  # never waiting as told
    assert statuses[-1] == 403, statuses
    wait_for(lambda: _ask(b, key).status_code == 403, 10, "b to hold the ban started on a")

    env = {"LAMPLIGHTER_DATABASE_URL": postgres_url, "LAMPLIGHTER_REDIS_URL": REDIS_URL}
    restored = cli(a.settings.data_dir, "users", "restore", email, env=env)
    assert restored.exit_code == 0, restored.stderr
    for server in (a, b):  # at most refused for the rate now (429), not banned
        wait_for(lambda s=server: _ask(s, key).status_code != 403, 10, "the ban to be lifted")


@needs_redis
def test_a_replica_that_starts_during_a_ban_holds_it_from_its_first_request(
    replicas: tuple[LiveServer, LiveServer], postgres_url: str, tmp_path: Path
) -> None:
    """A rolling restart or a scale-up starts replicas while bans are in force: they hold
    them (pinned on the bulletin), and a restore sent to one of them lifts them everywhere."""
    a, _ = replicas
    email, key = a.new_user(plan="trickle")
    _, admin_key = a.new_user(admin=True)
    statuses = [_ask(a, key).status_code for _ in range(9)]  # never waiting as told
    assert statuses[-1] == 403, statuses
    with _replica(tmp_path / "c", postgres_url) as c:
        assert _ask(c, key).status_code == 403
        admin = {"authorization": f"Bearer {admin_key}"}
        restored = httpx.post(f"{c.base_url}/api/admin/users/{email}/restore", headers=admin)
        assert restored.status_code == 200 and restored.json()["temporary_ban_lifted"] is True
        wait_for(lambda: _ask(a, key).status_code != 403 or None, 10, "a to lift the ban")
    with _replica(tmp_path / "d", postgres_url) as d:  # lifted: no longer pinned either
        assert _ask(d, key).status_code != 403  # at most refused for the rate (429)
