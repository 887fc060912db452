"""Two gateway replicas over one database and the real Redis: a plan changed through one binds
requests on the other, and an answer cached by one is served by the other."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from lamplighter.traffic.cache import SHARED_PREFIX
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.fleet import REDIS_URL

PLAN = """
[plans.shared]
requests_per_minute = 100
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    data_dir: Path = tmp_path_factory.mktemp("replicas")
    config = data_dir / "lamplighter.toml"
    config.write_text(PLAN)

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    def replica() -> LiveServer:
        shared = {"redis_url": REDIS_URL, "replicas": 2, "embedded_engine": False}
        return LiveServer(make_settings(data_dir, config=config, **shared), backends)

    with replica() as first, replica() as second:
        yield first, second


def _ask(server: LiveServer, key: str, content: str, **extra: object) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": SCRIPTED, "messages": [{"role": "user", "content": content}], **extra},
        timeout=30,
    )


def _within(seconds: float, check: Callable[[], bool]) -> int:
    """How many tries ``check`` took to pass; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    tries = 0
    while True:
        tries += 1
        if check():
            return tries
        assert time.monotonic() < deadline, "the other replica never caught up"


def test_a_plan_changed_on_one_replica_binds_the_next_request_on_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    first, second = replicas
    _, admin = first.new_user(admin=True)
    _, key = first.new_user(plan="shared")
    before = _ask(second, key, "hello")
    assert before.headers["x-ratelimit-limit-requests"] == "100"
    changed = httpx.put(
        f"{first.base_url}/api/admin/plans/shared",
        headers={"authorization": f"Bearer {admin}"},
        json={"requests_per_minute": 7},
    )
    assert changed.status_code == 200, changed.text
    # The bulletin crosses to the other replica at once; the poll only absorbs its delivery.
    tries = _within(
        2.0, lambda: _ask(second, key, "hello").headers["x-ratelimit-limit-requests"] == "7"
    )
    assert tries <= 3
    assert second.app.state.services.plans.get("shared").requests_per_minute == 7


def test_an_answer_cached_on_one_replica_is_served_by_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    first, second = replicas
    _, key = first.new_user(plan="shared")
    question = f"Deterministic question {uuid.uuid4().hex}"
    shared = redis.Redis.from_url(REDIS_URL)
    before = set(shared.keys(SHARED_PREFIX + "*"))
    made = _ask(first, key, question, temperature=0)
    assert made.status_code == 200 and made.headers["x-lamplighter-cache"] == "miss"
    # The first replica shares the answer in the background, just after answering.
    _within(2.0, lambda: bool(set(shared.keys(SHARED_PREFIX + "*")) - before))
    shared.close()
    again = _ask(second, key, question, temperature=0)
    assert again.headers["x-lamplighter-cache"] == "hit"
    assert (
        again.json()["choices"][0]["message"]["content"]
        == (made.json()["choices"][0]["message"]["content"])
    )
