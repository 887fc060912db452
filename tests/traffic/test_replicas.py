"""Two gateway replicas over one database and the real Redis: a plan changed through one binds
requests on the other, and an answer cached by one is served by the other."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from lamplighter.store.models import utcnow
from lamplighter.store.usage import UsageLedger
from lamplighter.traffic.cache import SHARED_PREFIX
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.fleet import REDIS_URL

SLOW = "scripted-slow"  # a word every 10 ms
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
        return [ScriptedBackend(SCRIPTED), ScriptedBackend(SLOW, pace_s=0.01)]

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


def test_a_broken_bulletin_subscription_leaves_live_plan_edits_alone(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    """A replica whose subscription broke (a Redis restart, a proxy's idle timeout) rereads
    the plans from the database when it is back: a plan edited live stays as edited, where it
    was once overwritten by the config file's, on every replica, by a reload nobody asked for."""
    first, second = replicas
    _, admin = first.new_user(admin=True)
    edited = httpx.put(
        f"{first.base_url}/api/admin/plans/shared",
        headers={"authorization": f"Bearer {admin}"},
        json={"requests_per_minute": 11},
    )
    assert edited.status_code == 200, edited.text
    services = second.app.state.services
    name = f"lamplighter-bulletin-{services.bulletin.me}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        (old,) = [c["id"] for c in client.client_list(_type="pubsub") if c["name"] == name]
        client.client_kill_filter(_id=old)

        def subscribed_again() -> bool:
            found = [c["id"] for c in client.client_list(_type="pubsub") if c["name"] == name]
            return bool(found) and found != [old]

        _within(10.0, subscribed_again)
    finally:
        client.close()
    # Caught up: a plan changed on the first replica after the break binds on the second.
    changed = httpx.put(
        f"{first.base_url}/api/admin/plans/shared",
        headers={"authorization": f"Bearer {admin}"},
        json={"max_tokens": 333},
    )
    assert changed.status_code == 200, changed.text
    _within(5.0, lambda: services.plans.get("shared").max_tokens == 333)
    for replica in (first, second):
        plan = replica.app.state.services.plans.get("shared")
        assert plan.requests_per_minute == 11, replica.base_url


def test_an_answer_one_replica_writes_outlives_the_others_sweeps(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    """Replicas settle the answers a replica that died left in progress: those that no replica
    has said it runs for a while. One that a live replica writes is said to run (its
    heartbeat), so the others' sweeps leave it alone however old it is."""
    first, second = replicas
    _, key = first.new_user(plan="shared")
    made = first.client(key).responses.create(
        model=SLOW, input=" ".join(["word"] * 600), background=True
    )
    answer = uuid.UUID(made.id.removeprefix("resp_"))

    async def age(services: Any) -> float:
        async with services.db.transaction() as session:
            usage = await UsageLedger(session).of_message(answer)
        assert usage is not None and usage.finish_reason == "in_progress"
        return (utcnow() - usage.created_at).total_seconds()

    _within(10.0, lambda: first.call(age) > 0.5)  # older than the silence the sweep allows
    first.call(lambda services: services.chat.heartbeat())
    assert second.call(lambda services: services.chat.recover(silent_for=0.4)) == 0
    assert first.client(key).responses.retrieve(made.id).status == "in_progress"
