"""Plans, rate limits and admission through the real server, with the official SDK as client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, SCRIPTED, LiveServer
from tests.test_streams import wait_until

HI = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "Write a very long essay about the history of lighthouses."}]


@pytest.fixture(scope="module")
def admin(server: LiveServer) -> Iterator[httpx.Client]:
    key = server.call(lambda s: s.accounts.create_key("admin@localhost", "tests")).secret
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client


def plan(admin: httpx.Client, **fields: Any) -> str:
    """A fresh plan with roomy defaults overridden by ``fields``."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    roomy = {
        "priority": 0,
        "requests_per_minute": 10_000,
        "tokens_per_minute": 10_000_000,
        "tokens_per_day": 100_000_000,
        "concurrent_streams": 100,
        "max_tokens": 4096,
        "queue_patience_s": 120,
    }
    response = admin.put(f"/api/admin/plans/{name}", json={**roomy, **fields})
    assert response.status_code == 200, response.text
    return name


def on_plan(server: LiveServer, name: str, **kwargs: Any) -> openai.OpenAI:
    _, key = server.new_user(plan=name)
    return server.client(key, **kwargs)


def test_every_v1_answer_carries_rate_limit_headers(
    server: LiveServer, admin: httpx.Client
) -> None:
    client = on_plan(server, plan(admin, requests_per_minute=30, tokens_per_minute=9000))
    raw = client.chat.completions.with_raw_response.create(model=SCRIPTED, messages=HI)
    assert raw.headers["x-ratelimit-limit-requests"] == "30"
    assert raw.headers["x-ratelimit-remaining-requests"] == "29"
    assert raw.headers["x-ratelimit-limit-tokens"] == "9000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 9000
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.headers["x-ratelimit-reset-tokens"]
    models = client.models.with_raw_response.list()
    assert models.headers["x-ratelimit-remaining-requests"] == "29"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=SCRIPTED, messages=[])
    assert bad.value.response.headers["x-ratelimit-limit-requests"] == "30"
    stream = client.chat.completions.with_raw_response.create(
        model=SCRIPTED, messages=HI, stream=True
    )
    assert stream.headers["x-ratelimit-remaining-requests"] == "28"


def test_requests_per_minute_refusal_says_which_limit_and_when(
    server: LiveServer, admin: httpx.Client
) -> None:
    client = on_plan(server, plan(admin, requests_per_minute=2), max_retries=0)
    client.chat.completions.create(model=SCRIPTED, messages=HI)
    client.chat.completions.create(model=SCRIPTED, messages=HI)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=SCRIPTED, messages=HI)
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    assert "requests per minute" in error.message and "limit 2, used 2" in error.message
    assert 25 <= int(error.response.headers["retry-after"]) <= 31
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_the_sdk_waits_for_our_retry_after_and_then_succeeds(
    server: LiveServer, admin: httpx.Client
) -> None:
    # One request a second, sixty at once: the 61st waits about a second.
    name = plan(admin, requests_per_minute=60, max_tokens=4)
    _, key = server.new_user(plan=name)
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    client = server.client(key, max_retries=3, http_client=http)
    client_no_retry = server.client(key, max_retries=0)
    for _ in range(70):
        try:
            client_no_retry.chat.completions.create(model=SCRIPTED, messages=HI, max_tokens=4)
        except openai.RateLimitError as error:
            wait = float(error.response.headers["retry-after-ms"]) / 1000
            break
    else:
        raise AssertionError("the request limit never refused")
    started = time.monotonic()
    answer = client.chat.completions.create(model=SCRIPTED, messages=HI, max_tokens=4)
    assert answer.choices[0].message.content
    assert statuses[0] == 429 and statuses[-1] == 200
    assert time.monotonic() - started >= wait * 0.8


def test_the_daily_quota_is_insufficient_quota(server: LiveServer, admin: httpx.Client) -> None:
    client = on_plan(server, plan(admin, tokens_per_day=30, max_tokens=10), max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(5):
            client.chat.completions.create(model=SCRIPTED, messages=HI, max_tokens=10)
    assert refused.value.code == "insufficient_quota"
    assert "daily token quota" in refused.value.message
    assert int(refused.value.response.headers["retry-after"]) > 0


def test_unused_tokens_are_given_back(server: LiveServer, admin: httpx.Client) -> None:
    client = on_plan(server, plan(admin, tokens_per_minute=5000))
    raw = client.chat.completions.with_raw_response.create(
        model=SCRIPTED, messages=HI, max_tokens=2000
    )
    reserved_left = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert reserved_left <= 5000 - 2000  # the whole max_tokens was reserved up front ...
    after = client.models.with_raw_response.list()
    # ... and what the short answer did not use came back once it finished.
    assert int(after.headers["x-ratelimit-remaining-tokens"]) >= 5000 - 20


def test_plan_caps_max_tokens_and_limits_models(server: LiveServer, admin: httpx.Client) -> None:
    client = on_plan(server, plan(admin, max_tokens=3, models=[SCRIPTED]))
    answer = client.chat.completions.create(
        model=SCRIPTED,
        messages=[{"role": "user", "content": "one two three four five"}],
        max_tokens=50,
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI)
    assert refused.value.code == "model_not_found" and "plan" in refused.value.message


def test_admin_changes_apply_on_the_next_request(server: LiveServer, admin: httpx.Client) -> None:
    name = plan(admin)
    email, key = server.new_user(plan=name)
    client = server.client(key, max_retries=0)
    client.chat.completions.create(model=SCRIPTED, messages=HI)
    assert admin.put(f"/api/admin/plans/{name}", json={"requests_per_minute": 1}).status_code == 200
    client.chat.completions.create(model=SCRIPTED, messages=HI)  # the one a minute allows
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=SCRIPTED, messages=HI)
    # Moving the user to a roomier plan lifts the limit at once.
    moved = admin.put(f"/api/admin/users/{email}/plan", json={"plan": plan(admin)})
    assert moved.status_code == 200
    client.chat.completions.create(model=SCRIPTED, messages=HI)
    listed = admin.get("/api/admin/plans").json()["data"]
    assert {"free", "plus", "team", name} <= {p["name"] for p in listed}


def test_admin_api_validates_and_hides_itself(server: LiveServer, admin: httpx.Client) -> None:
    assert admin.put("/api/admin/plans/x", json={"requests_per_minute": 0}).status_code == 400
    assert admin.put("/api/admin/plans/x", json={"bogus": 1}).status_code == 400
    missing = admin.put("/api/admin/users/nobody@example.org/plan", json={"plan": "free"})
    assert missing.status_code == 404
    assert admin.put("/api/admin/users/x@y.z/plan", json={"plan": "nope"}).status_code == 404
    _, key = server.new_user(plan="roomy")
    headers = {"authorization": f"Bearer {key}"}
    for method, path in [
        ("GET", "/api/admin/plans"),
        ("PUT", "/api/admin/plans/free"),
        ("PUT", "/api/admin/users/a@b.c/plan"),
    ]:
        response = httpx.request(method, server.base_url + path, headers=headers, json={})
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "unknown_url"


class Holder:
    """Holds the embedded model's only slot with a long stream until released."""

    def __init__(self, server: LiveServer, key: str) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(server, key), daemon=True)

    def _run(self, server: LiveServer, key: str) -> None:
        body = {"model": MODEL, "messages": LONG, "max_tokens": 1500, "stream": True}
        with httpx.stream(
            "POST",
            server.base_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=120,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
                    "content"
                ):
                    self.started.set()
                    self.release.wait(60)
                    return

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self.started.wait(60)
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.thread.join(60)


def queued(server: LiveServer) -> int:
    return server.call(lambda s: _queued(s))


async def _queued(services: Any) -> int:
    pool = services.chat.admission.pools.get("embedded")
    return 0 if pool is None else pool.queued


def test_a_concurrent_stream_limit_and_a_cut_stream_frees_capacity_at_once(
    server: LiveServer, admin: httpx.Client
) -> None:
    _, key = server.new_user(plan=plan(admin, concurrent_streams=1))
    client = server.client(key, max_retries=0)
    with Holder(server, key):
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=SCRIPTED, messages=HI)
        assert "concurrent" in refused.value.message
        # Told apart from the per-minute limit (the same code, as at OpenAI) by its type.
        assert refused.value.code == "rate_limit_exceeded"
        assert refused.value.type == "concurrent_requests"

    # The held stream was cut when its client left; its slot is free as soon as the server has
    # seen the connection close.
    def try_again() -> object:
        try:
            return client.chat.completions.create(model=SCRIPTED, messages=HI, max_tokens=1)
        except openai.RateLimitError:
            return None

    wait_until(try_again, timeout=5)


def test_a_request_that_cannot_start_within_its_patience_gets_503(
    server: LiveServer, admin: httpx.Client
) -> None:
    holder_key = server.new_user(plan="roomy")[1]
    client = on_plan(server, plan(admin, queue_patience_s=0.3, priority=5), max_retries=0)
    with Holder(server, holder_key), pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert refused.value.status_code == 503
    assert refused.value.code == "overloaded"
    assert int(refused.value.response.headers["retry-after"]) >= 1


async def test_paying_plans_start_first_and_leavers_leave_the_queue(
    server: LiveServer, admin: httpx.Client
) -> None:
    holder_key = server.new_user(plan="roomy")[1]
    free_key = server.new_user(plan=plan(admin, priority=2))[1]
    team_key = server.new_user(plan=plan(admin, priority=0))[1]
    leaver_key = server.new_user(plan=plan(admin, priority=2))[1]
    finished: list[str] = []

    async def ask(name: str, key: str, **timeout: float) -> None:
        async with httpx.AsyncClient(
            base_url=server.base_url,
            timeout=httpx.Timeout(60, **timeout),
            headers={"authorization": f"Bearer {key}"},
        ) as client:
            response = await client.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 2}
            )
            assert response.status_code == 200, response.text
            finished.append(name)

    holder = Holder(server, holder_key)
    await asyncio.to_thread(holder.__enter__)
    try:
        leaver = asyncio.create_task(ask("leaver", leaver_key, read=0.3))
        free = asyncio.create_task(ask("free", free_key))
        await asyncio.to_thread(wait_until, lambda: queued(server) == 2 or None)
        team = asyncio.create_task(ask("team", team_key))
        with pytest.raises(httpx.ReadTimeout):
            await leaver
        # The client that gave up is out of the queue at once; the others still wait.
        await asyncio.to_thread(wait_until, lambda: queued(server) == 2 or None)
    finally:
        await asyncio.to_thread(holder.__exit__)
    await asyncio.gather(free, team)
    assert finished == ["team", "free"]


def test_deterministic_repeats_come_from_the_cache_and_use_no_capacity(
    server: LiveServer, admin: httpx.Client
) -> None:
    name = plan(admin, cache_ttl_s=60, queue_patience_s=0.3)
    client = on_plan(server, name)
    question = [{"role": "user", "content": f"Name a fruit. {uuid.uuid4().hex[:6]}"}]
    first = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=question, max_tokens=8, temperature=0.0
    )
    assert first.headers["x-lamplighter-cache"] == "miss"
    holder_key = server.new_user(plan="roomy")[1]
    with Holder(server, holder_key):  # the model is busy; only the cache can answer in time
        again = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=question, max_tokens=8, temperature=0.0
        )
    assert again.headers["x-lamplighter-cache"] == "hit"
    a, b = first.parse(), again.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert a.usage is not None and b.usage is not None
    assert (b.usage.prompt_tokens, b.usage.completion_tokens) == (
        a.usage.prompt_tokens,
        a.usage.completion_tokens,
    )
    # The first was computed; the repeat's whole prompt was cached, as OpenAI reports a cache.
    assert a.usage.prompt_tokens_details is not None and b.usage.prompt_tokens_details is not None
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    assert b.usage.prompt_tokens_details.cached_tokens == b.usage.prompt_tokens
    assert b.id != a.id  # a stored answer of its own

    async def cached_flag(services):  # type: ignore[no-untyped-def]
        from lamplighter.chat import message_id_from
        from lamplighter.store.usage import UsageLedger

        async with services.db.transaction() as session:
            usage = await UsageLedger(session).of_message(message_id_from(b.id))
            return usage.cached

    assert server.call(cached_flag) is True
    sampled = client.chat.completions.with_raw_response.create(
        model=SCRIPTED, messages=question, temperature=1.0
    )
    assert "x-lamplighter-cache" not in sampled.headers
    other = on_plan(server, plan(admin, cache_ttl_s=60))  # caches are per plan
    assert (
        other.chat.completions.with_raw_response.create(
            model=MODEL, messages=question, max_tokens=8, temperature=0.0
        ).headers["x-lamplighter-cache"]
        == "miss"
    )


async def test_lower_plans_are_degraded_under_pressure_before_anyone_is_refused(
    server: LiveServer, admin: httpx.Client
) -> None:
    created = await asyncio.to_thread(
        admin.put,
        "/api/admin/plans/squeezed",
        json={"priority": 0, "queue_patience_s": 60, "cache_ttl_s": 0},
    )
    assert created.status_code == 200
    squeezed_key = server.new_user(plan="squeezed")[1]
    roomy_key = server.new_user(plan="roomy")[1]
    body = {"model": MODEL, "messages": LONG, "max_tokens": 6, "temperature": 0.0}

    async def ask(key: str) -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=server.base_url, timeout=120, headers={"authorization": f"Bearer {key}"}
        ) as client:
            return await client.post("/v1/chat/completions", json=body)

    calm = await ask(squeezed_key)
    assert calm.json()["usage"]["completion_tokens"] == 6
    assert "x-lamplighter-degraded" not in calm.headers
    holder = Holder(server, roomy_key)
    await asyncio.to_thread(holder.__enter__)
    try:
        waiting = asyncio.create_task(ask(roomy_key))
        await asyncio.to_thread(wait_until, lambda: queued(server) == 1 or None)
        squeezed = asyncio.create_task(ask(squeezed_key))
        await asyncio.to_thread(wait_until, lambda: queued(server) == 2 or None)
    finally:
        await asyncio.to_thread(holder.__exit__)
    degraded, normal = await squeezed, await waiting
    assert degraded.status_code == 200
    assert degraded.headers["x-lamplighter-degraded"] == "max_tokens=2"
    assert degraded.json()["usage"]["completion_tokens"] == 2
    assert normal.json()["usage"]["completion_tokens"] == 6
