"""Live configuration reloads: plans, backends and policies change without a restart, through
the admin API or SIGHUP; a file that does not pass its checks changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamplighter.app import lay_groundwork
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.exceptions import ConfigError
from lamplighter.reload import read_tables
from lamplighter.settings import Settings
from lamplighter.simulation.server import SimSettings
from lamplighter.simulation.server import create_app as sim_app
from tests.conftest import SCRIPTED, LiveServer, ThreadedServer, free_port, make_settings
from tests.fleet import (
    REDIS_URL,
    Gateway,
    SimBackend,
    needs_redis,
    new_users,
    store_plans,
    wait_for,
)

EXTRA = "sim-extra"


def plans(rpm: int) -> str:
    return f"""
[plans.reloadable]
requests_per_minute = {rpm}
tokens_per_minute = 1000000
tokens_per_day = 100000000
concurrent_streams = 100
queue_patience_s = 60
cache_ttl_s = 0
"""


def upstream(url: str, name: str = "extra", capacity: int = 4) -> str:
    return f"""
[[backends]]
name = "{name}"
url = "{url}/v1"
models = ["{EXTRA}"]
capacity = {capacity}
health_interval_s = 1
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedServer]:
    """An OpenAI-compatible upstream (the simulated GPU), slow enough to stream for a while."""
    with ThreadedServer(sim_app(SimSettings(model=EXTRA, time_scale=2.0)), free_port()) as up:
        yield up


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    data_dir = tmp_path_factory.mktemp("reload")
    config = data_dir / "lamplighter.toml"
    config.write_text(plans(100))

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    with LiveServer(make_settings(data_dir, config=config), backends) as server:
        yield server, config


@pytest.fixture(scope="module")
def admin(live: tuple[LiveServer, Path]) -> Iterator[httpx.Client]:
    server, _ = live
    _, key = server.new_user(admin=True)
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def key(live: tuple[LiveServer, Path]) -> str:
    return live[0].new_user(plan="reloadable")[1]


def ask(server: LiveServer, key: str, model: str = SCRIPTED, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra},
        timeout=30,
    )


def reload(admin: httpx.Client) -> httpx.Response:
    return admin.post("/api/admin/config/reload")


def test_a_reloaded_plan_limit_binds_the_next_request(
    live: tuple[LiveServer, Path], admin: httpx.Client, key: str
) -> None:
    server, config = live
    config.write_text(plans(100))
    assert reload(admin).status_code == 200
    assert ask(server, key).headers["x-ratelimit-limit-requests"] == "100"
    config.write_text(plans(7))
    answer = reload(admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["plans"] == ["reloadable"]
    assert ask(server, key).headers["x-ratelimit-limit-requests"] == "7"
    # Stored, and written down: the next start (or another replica) reads the same plan.
    stored = {p["name"]: p for p in admin.get("/api/admin/plans").json()["data"]}
    assert stored["reloadable"]["requests_per_minute"] == 7
    entries = admin.get("/api/admin/audit").json()["data"]
    assert any(e["action"] == "plan.reload" and e["target"] == "reloadable" for e in entries)
    # Reloading an unchanged file changes nothing.
    assert reload(admin).json()["plans"] == []


BROKEN = {
    "not TOML": ("[plans.reloadable\nrequests_per_minute = 3\n", "cannot read config file"),
    "a bad limit": (
        "[plans.reloadable]\nrequests_per_minute = 0\n",
        "[plans.reloadable]: requests_per_minute must be at least 1",
    ),
    "a limit of the wrong type": (
        '[plans.reloadable]\nrequests_per_minute = "3"\n',
        "[plans.reloadable]: 'requests_per_minute' must be an integer, not '3'",
    ),
    "an unknown table": (plans(70) + "[plan.other]\nrequests_per_minute = 3\n", "unknown tables"),
    "a typo in a backend": (
        plans(70) + '[[backends]]\nname = "x"\nurl = "http://127.0.0.1:1/v1"\n'
        'models = ["m"]\ncapasity = 2\n',
        "[[backends]] 'x': unknown keys: capasity; known: api_key, ",
    ),
    "a misspelt key under [traffic]": (
        plans(70) + '[traffic]\nhedroom = {"2" = 0.3}\n',
        "[traffic]: unknown keys: hedroom; known: degrade, headroom",
    ),
    "a degrade rule for a model nobody serves": (
        plans(70) + '[[traffic.degrade]]\nplans = ["free"]\nwhen_queued_at_least = 1\n'
        'model = "nope"\n',
        "no backend serves the model 'nope'",
    ),
    "a bad setting": (plans(70) + '[lamplighter]\nport = "eighty"\n', "setting 'port'"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_file_is_refused_and_the_old_configuration_stays(
    live: tuple[LiveServer, Path], admin: httpx.Client, key: str, case: str
) -> None:
    server, config = live
    config.write_text(plans(70))
    assert reload(admin).status_code == 200
    refused_before = _metric(server, 'lamplighter_config_reloads_total{outcome="refused"}')
    text, message = BROKEN[case]
    config.write_text(text)
    answer = reload(admin)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_config"
    assert message in error["message"]
    # Still serving, with the configuration it had.
    served = ask(server, key)
    assert served.status_code == 200
    assert served.headers["x-ratelimit-limit-requests"] == "70"
    status = admin.get("/api/admin/config").json()
    assert status["last_error"] == error["message"].removeprefix(
        "The configuration was not reloaded: "
    )
    after = _metric(server, 'lamplighter_config_reloads_total{outcome="refused"}')
    assert after == refused_before + 1
    assert _metric(server, "lamplighter_config_last_reload_ok") == 0
    config.write_text(plans(70))
    assert reload(admin).status_code == 200
    assert admin.get("/api/admin/config").json()["last_error"] is None


def test_backends_come_and_go_live_and_running_answers_finish(
    live: tuple[LiveServer, Path], admin: httpx.Client, key: str, sim: ThreadedServer
) -> None:
    server, config = live
    config.write_text(plans(1000))
    assert reload(admin).status_code == 200
    assert ask(server, key, EXTRA).status_code == 404
    config.write_text(plans(1000) + upstream(sim.base_url))
    answer = reload(admin)
    assert answer.json()["backends"] == {"added": ["extra"], "removed": [], "changed": []}
    models = admin.get("/v1/models").json()["data"]
    assert EXTRA in [m["id"] for m in models]
    assert ask(server, key, EXTRA, max_tokens=5).json()["usage"]["completion_tokens"] == 5
    config.write_text(plans(1000) + upstream(sim.base_url, capacity=6))
    answer = reload(admin)
    assert answer.json()["backends"] == {"added": [], "removed": [], "changed": ["extra"]}
    assert server.call(_slots) == 6  # its admission pool grew with it

    # A stream running on the backend when it is removed finishes there.
    events: list[str] = []
    first = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={
                "model": EXTRA,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 60,
                "stream": True,
            },
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(10)
    config.write_text(plans(1000))
    answer = reload(admin)
    assert answer.json()["backends"] == {"added": [], "removed": ["extra"], "changed": []}
    assert ask(server, key, EXTRA).status_code == 404  # the next request: gone
    reader.join(timeout=30)
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in events[-2]
    assert len(events) == 1 + 60 + 1 + 1  # role, 60 tokens, the finish, [DONE]
    # Closed once its last stream ended (at the next reload, or at shutdown).
    assert reload(admin).status_code == 200
    assert server.call(_retired) == 0


async def _slots(services: Any) -> int:
    return int(services.chat.admission.pools["extra"].scheduler.slots)


async def _retired(services: Any) -> int:
    return sum(1 for thing in services.reloader._retired if hasattr(thing, "streams"))


def test_policies_change_live_and_settings_wait_for_a_restart(
    live: tuple[LiveServer, Path], admin: httpx.Client
) -> None:
    server, config = live
    rule = '[[traffic.degrade]]\nplans = ["reloadable"]\nwhen_queued_at_least = 5\nmax_tokens = 9\n'
    config.write_text(plans(1000) + rule + "[lamplighter]\nsession_days = 3\n")
    answer = reload(admin).json()
    assert answer["policies"] == ["traffic"]
    assert answer["restart_needed"] == ["session_days"]
    degrade = server.call(_degrade)
    assert [(set(r.plans), r.max_tokens) for r in degrade] == [({"reloadable"}, 9)]
    config.write_text(plans(1000))
    assert reload(admin).json()["policies"] == ["traffic"]
    assert server.call(_degrade) == ()


async def _degrade(services: Any) -> Any:
    return services.chat.degrade


def _metric(server: LiveServer, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@needs_redis
def test_a_reload_on_one_replica_reaches_every_replica(tmp_path: Path, sim: ThreadedServer) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text(plans(1000))

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    def replica() -> LiveServer:
        shared = {"redis_url": REDIS_URL, "replicas": 2, "embedded_engine": False}
        return LiveServer(make_settings(tmp_path, config=config, **shared), backends)

    with replica() as first, replica() as second:
        _, admin = first.new_user(admin=True)
        config.write_text(plans(1000) + upstream(sim.base_url, f"extra-{tmp_path.name[-8:]}"))
        answer = httpx.post(
            f"{first.base_url}/api/admin/config/reload",
            headers={"authorization": f"Bearer {admin}"},
        )
        assert answer.status_code == 200, answer.text
        wait_for(lambda: EXTRA in second.call(_models), 10, "the other replica has reloaded")


async def _models(services: Any) -> list[str]:
    return list(services.router.models)


def test_sighup_reloads_a_running_server_and_a_bad_file_is_logged(tmp_path: Path) -> None:
    sim = SimBackend("sim", tmp_path, time_scale=0.05)
    sim.start()
    config = tmp_path / "lamplighter.toml"
    config.write_text(plans(100) + sim.table("sim"))
    url = f"sqlite:///{tmp_path / 'lamplighter.db'}"
    replica = Gateway("replica-0", tmp_path, database_url=url, config=config, redis_url="")
    try:
        sim.wait_up()
        store_plans(url, plans(100))
        key = new_users(url, "reloadable", admin=True)[0].key
        replica.start()
        replica.wait_ready()
        limit = _limit(replica.url, key)
        assert limit == "100"
        config.write_text(plans(7) + sim.table("sim"))
        assert replica.process is not None
        replica.process.send_signal(signal.SIGHUP)
        wait_for(lambda: _limit(replica.url, key) == "7", 10, "the new limit holds")

        config.write_text("[plans.reloadable]\nrequests_per_minute = -1\n")
        replica.process.send_signal(signal.SIGHUP)
        wait_for(lambda: _refused(replica) == 1, 10, "the reload is refused")
        assert replica.alive
        assert _limit(replica.url, key) == "7"
        errors = [e for e in replica.logs() if e["level"] == "error"]
        assert len(errors) == 1
        assert "reload refused" in errors[0]["message"]
        assert "requests_per_minute must be at least 1" in errors[0]["message"]
        assert replica.stop() in (0, -signal.SIGTERM)
    finally:
        replica.kill()
        sim.kill()


def _limit(base_url: str, key: str) -> str | None:
    with contextlib.suppress(httpx.HTTPError):
        answer = httpx.post(
            f"{base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={
                "model": "sim-llama-3-8b-instruct",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            timeout=10,
        )
        return answer.headers.get("x-ratelimit-limit-requests")
    return None


def _refused(replica: Gateway) -> float:
    text = httpx.get(replica.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('lamplighter_config_reloads_total{outcome="refused"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("toml", "where", "known"),
    [
        ('[traffic]\nhedroom = {"2" = 0.3}\n', "[traffic]", "degrade, headroom"),
        ('[[traffic.degrade]]\nplans = ["free"]\nmax_tokens = 9\nwhen = 1\n', "[[traffic.degrade]]",
         "max_tokens, model, plans, when_queued_at_least"),
        ("[abuse]\ntreshold = 9\n", "[abuse]", "ban_s, exempt, half_life_s, max_ban_s, "),
        ("[abuse.watch]\nflood = 9\n", "[abuse.watch]", "flood_accounts, flood_window_s, "),
        ('[moderation]\nactoin = "tag"\n', "[moderation]", "action, api_key, fail_open, "),
        ('[[moderation.rules]]\ncategory = "x"\nword = ["y"]\n', "[[moderation.rules]]",
         "category, patterns, words"),
        ('[[backends]]\nname = "gpu"\nurl = "http://h/v1"\nmodels = ["m"]\ncapasity = 2\n',
         "[[backends]] 'gpu'", "api_key, api_key_env, breaker_cooldown_s, "),
    ],
)  # fmt: skip
def test_a_misspelt_key_in_any_table_is_refused_naming_it_and_the_known_ones(
    toml: str, where: str, known: str
) -> None:
    misspelt = toml.splitlines()[-1].split(" = ")[0]
    with pytest.raises(ConfigError) as refused:
        read_tables(tomllib.loads(toml))
    assert str(refused.value).startswith(f"{where}: unknown keys: {misspelt}; known: {known}")


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('[moderation]\naction = "blok"\n', "[moderation]: action 'blok'; use block, warn, tag"),
        (
            '[[moderation.rules]]\ncategory = "keys"\npatterns = ["(unclosed"]\n',
            "[[moderation.rules]] 'keys': missing ), unterminated subpattern",
        ),
        ('[moderation]\nfail_open = "false"\n', "'fail_open' must be true or false, not 'false'"),
    ],
)
def test_a_mistake_in_moderation_stops_the_start_before_the_database_as_a_reload_refuses_it(
    tmp_path: Path, toml: str, said: str
) -> None:
    """``serve`` lays the groundwork first and tells its ConfigError in one line, exit 2; the
    app's own start crashed on these with a traceback, exit 3."""
    config = tmp_path / "lamplighter.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as refused:
        asyncio.run(lay_groundwork(make_settings(tmp_path, config=config)))
    assert said in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "lamplighter.db").exists()
