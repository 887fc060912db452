"""An OpenAI-compatible upstream as a backend. The upstream here is another Lamplighter, which
speaks the same protocol as vLLM and friends and lets the test look inside it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from aiohttp import web

from lamplighter.app import default_backends
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.exceptions import ConfigError
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.fleet import Processes, SimBackend
from tests.test_router import ANSWER, delta, sse
from tests.test_streams import read_then_hang_up, settled, wait_until
from tests.upstream_server import Handler, gateway_over, recording, serve_in_thread

T = TypeVar("T")


@pytest.fixture
def gateway(server: LiveServer, tmp_path: Path) -> Iterator[LiveServer]:
    _, key = server.new_user(plan="roomy")
    url = server.base_url + "/v1"
    with gateway_over(url, (SCRIPTED,), tmp_path, api_key=key, capacity=4) as live:
        yield live


def test_answers_and_usage_come_from_the_upstream(gateway: LiveServer) -> None:
    _, key = gateway.new_user(plan="roomy")
    client = gateway.client(key)
    answer = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "relay this please"}]
    )
    assert answer.choices[0].message.content == "You said: relay this please"
    assert answer.usage is not None
    # The upstream's count (its own tokenizer: words here), not the gateway's estimate.
    assert answer.usage.prompt_tokens == 4
    assert answer.usage.completion_tokens == 5
    stream = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "and stream it"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "You said: and stream it"
    )


def test_the_prompt_tokens_an_upstream_found_in_its_prefix_cache_are_reported(
    tmp_path: Path,
) -> None:
    """vLLM and SGLang say how much of the prompt their prefix cache held (which the prefix
    affinity routing is there to raise); the client sees it in ``usage``, streamed or not."""
    answer = sse(
        delta("Hel"),
        delta("lo", "stop"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 40,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 32},
            },
        },
        "[DONE]",
    )
    with (
        recording(lambda _: answer) as (url, _),
        gateway_over(url, ("m",), tmp_path) as gateway,
    ):
        client = gateway.client(gateway.new_user(plan="roomy")[1])
        asked = [{"role": "user", "content": "the same long system prompt, then a question"}]
        whole = client.chat.completions.create(model="m", messages=asked)
        assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
        assert (whole.usage.prompt_tokens, whole.usage.prompt_tokens_details.cached_tokens) == (
            40,
            32,
        )
        streamed = client.chat.completions.create(
            model="m", messages=asked, stream=True, stream_options={"include_usage": True}
        )
        [usage] = [chunk.usage for chunk in streamed if chunk.usage is not None]
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 32
        responded = client.responses.create(model="m", input="and through the Responses API")
        assert responded.usage is not None
        assert responded.usage.input_tokens_details.cached_tokens == 32


@pytest.fixture
def paced_gateway(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """(upstream, gateway): a Lamplighter whose scripted model is paced, and a gateway over it."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED, pace_s=0.002)]

    (tmp_path / "c.toml").write_text(ROOMY_PLAN)
    settings = make_settings(tmp_path, config=tmp_path / "c.toml")
    with LiveServer(settings, backends) as upstream:
        _, key = upstream.new_user(plan="roomy")
        url = upstream.base_url + "/v1"
        with gateway_over(url, (SCRIPTED,), tmp_path / "gateway", api_key=key) as gateway:
            yield upstream, gateway


def test_a_client_that_leaves_cuts_the_upstream_generation_too(
    paced_gateway: tuple[LiveServer, LiveServer],
) -> None:
    server, gateway = paced_gateway
    _, key = gateway.new_user(plan="roomy")
    body = {"model": SCRIPTED, "messages": [{"role": "user", "content": "word " * 2000}]}
    completion_id, seen = read_then_hang_up(gateway, key, body, chunks=3)
    message, usage = wait_until(lambda: settled(gateway, completion_id))
    assert message.status == "cut" and message.content.startswith(seen)
    assert usage.completion_tokens < 2000

    async def upstream_answers(services):  # type: ignore[no-untyped-def]
        from sqlalchemy import select

        from lamplighter.store.models import Message

        async with services.db.transaction() as session:
            rows = await session.execute(select(Message.status).where(Message.role == "assistant"))
            return [status for (status,) in rows]

    # The upstream saw the disconnect and stopped as well.
    assert wait_until(lambda: server.call(upstream_answers) == ["cut"] or None)


def test_backend_tables_are_checked() -> None:
    with pytest.raises(ConfigError):
        UpstreamConfig.from_table({"name": "x", "url": "http://h/v1"})
    with pytest.raises(ConfigError):
        UpstreamConfig.from_table({"name": "x", "url": "http://h/v1", "models": [], "capacity": 1})
    config = UpstreamConfig.from_table(
        {"name": "gpu", "url": "http://h:8000/v1/", "models": ["m"], "capacity": 32}
    )
    assert (config.url, config.capacity, config.n_ctx) == ("http://h:8000/v1", 32, 8192)


@contextmanager
def gateway_over_two(tmp_path: Path, chat: Callable[[str], web.Response]) -> Iterator[LiveServer]:
    """Upstreams x and y (real HTTP servers on 127.0.0.1) serving model "m", each chat
    completion answered by ``chat(its name)``, behind a gateway on the roomy plan."""

    def handler(name: str) -> Handler:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.path == "/v1/models":
                return web.json_response({"object": "list", "data": []})
            if request.path != "/v1/chat/completions":
                return web.Response(status=404)
            return chat(name)

        return handle

    with serve_in_thread(handler("x")) as x, serve_in_thread(handler("y")) as y:

        async def backends(_: Settings) -> list[Backend]:
            return [
                UpstreamBackend(UpstreamConfig(name, server.url + "/v1", ("m",), capacity=4))
                for name, server in (("x", x), ("y", y))
            ]

        (tmp_path / "c.toml").write_text(ROOMY_PLAN)
        with LiveServer(make_settings(tmp_path, config=tmp_path / "c.toml"), backends) as live:
            yield live


def test_a_5xx_before_the_first_token_is_answered_by_another_backend(tmp_path: Path) -> None:
    """Two upstreams (real HTTP servers on 127.0.0.1): while one answers 502 the other answers
    everything; when both do, the client gets a 503 that says why, with retry-after, and the
    answer is stored as an error."""
    answers = {"x": 502, "y": 200}
    tried: list[str] = []

    def chat(name: str) -> web.Response:
        tried.append(name)
        if answers[name] != 200:
            return web.Response(status=answers[name], text="bad gateway")
        return web.Response(body=ANSWER, content_type="text/event-stream")

    with gateway_over_two(tmp_path, chat) as live:
        _, key = live.new_user(plan="roomy")
        client = live.client(key)
        for i in range(6):
            answer = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"question {i}"}]
            )
            assert answer.choices[0].message.content == "Hello"
        assert "x" in tried and tried.count("y") == 6
        answers["y"] = 503
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "and now?"}]
            )
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"]
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "backend_unavailable"
        assert "answered 503" in error["message"] and "y (tried)" in error["message"]
        assert "bad gateway" not in error["message"]  # the upstream's own words: the log's
        [outcome] = asyncio.run(streams(live, key, [{**ask("streamed?"), "model": "m"}]))
        assert outcome.error is not None and outcome.error["code"] == "backend_unavailable"
        message, usage = wait_until(lambda: settled(live, outcome.completion_id))
        assert message.status == "error" and message.content == ""
        # No backend gave a token: the client got an error, and is charged nothing for it.
        assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)
        live.close_clients()


def test_when_every_backend_is_full_the_client_waits_as_long_as_they_ask(tmp_path: Path) -> None:
    """Both upstreams answer 429 with retry-after: 7: the 503 says 7, not 1, so that the
    client (the SDK honours retry-after) does not ask again into the same refusal."""

    def chat(_: str) -> web.Response:
        return web.Response(status=429, headers={"retry-after": "7"}, text="busy")

    with gateway_over_two(tmp_path, chat) as live:
        client = live.client(live.new_user(plan="roomy")[1]).with_options(max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503
        assert int(refused.value.response.headers["retry-after"]) >= 7
        live.close_clients()


# -- A fleet of real sim-backend processes behind a live gateway ---------------------------------
#
# Three `lamplighter sim-backend` processes, each serving SIM_MODEL with two slots at the gateway:
# a; b (runs --scheduling-policy priority and is sent the plan's priority); c (plan "vip" only).
# Which backend served a request is read from the processes' own vllm:request_success_total.

SIM_MODEL = "sim-fleet"
DEADLINE_S = 30.0  # no request may take longer, whatever is killed
VIP_PLAN = """
[plans.vip]
priority = 0
requests_per_minute = 100000
tokens_per_minute = 100000000
tokens_per_day = 1000000000
concurrent_streams = 1000
max_tokens = 100000
queue_patience_s = 300
cache_ttl_s = 0
"""


def served(sim: SimBackend) -> int:
    """The requests ``sim`` has answered, by its own vllm:request_success_total."""
    return int(sim.metric("vllm:request_success_total") or 0)


Fleet = dict[str, SimBackend]

# Each backend's [[backends]] table: two slots, and quick to notice a process that dies.
BACKEND = {
    "capacity": 2,
    "n_ctx": 16384,
    "health_url": "/health",
    "health_interval_s": 0.2,
    "breaker_failures": 2,
    "breaker_cooldown_s": 1.0,
    "connect_timeout_s": 2,
    "first_token_timeout_s": 15,
    "timeout_s": 15,
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("sims")
    with Processes() as processes:
        sims = {
            name: processes.add(SimBackend(name, logs, SIM_MODEL, args=args))
            for name, args in (
                ("a", ("--seed", "1")),
                ("b", ("--seed", "2", "--scheduling-policy", "priority")),
                ("c", ("--seed", "3")),
            )
        }
        for sim in sims.values():
            sim.start()
        for sim in sims.values():
            sim.wait_up()
        yield sims


@pytest.fixture(scope="module")
def fleet_gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("fleet-gateway")
    config = data / "lamplighter.toml"
    config.write_text(
        ROOMY_PLAN
        + VIP_PLAN
        + fleet["a"].table(**BACKEND)
        + fleet["b"].table(**BACKEND, priority=True)
        + fleet["c"].table(**BACKEND, plans=["vip"])
    )
    settings = make_settings(data, config=config, embedded_engine=False)
    with LiveServer(settings, default_backends) as live:
        yield live
        live.close_clients()


def served_by(fleet: Fleet, work: Callable[[], T]) -> tuple[T, list[str]]:
    """Run ``work`` and name the backends that answered requests meanwhile (one per request)."""
    before = {name: served(sim) for name, sim in fleet.items()}
    result = work()
    after = {name: served(sim) for name, sim in fleet.items()}
    return result, [name for name in fleet for _ in range(after[name] - before[name])]


def gateway_metric(gateway: LiveServer, name: str, backend: str, more: str = "") -> float | None:
    text = httpx.get(gateway.base_url + "/metrics", timeout=5).text
    prefix = f'{name}{{backend="{backend}"{more}}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def poll(check: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        threading.Event().wait(0.02)
    raise AssertionError("condition not met in time")


@dataclass
class Outcome:
    status: int
    completion_id: str = ""
    text: list[str] = field(default_factory=list)
    finish: str | None = None
    error: dict[str, Any] | None = None
    seconds: float = 0.0


async def stream(client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]) -> Outcome:
    started = time.monotonic()
    headers = {"authorization": f"Bearer {key}"}
    async with client.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
        outcome = Outcome(r.status_code)
        if r.status_code != 200:
            outcome.error = json.loads(await r.aread())["error"]
        else:
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    outcome.error = event["error"]
                    continue
                outcome.completion_id = event["id"]
                for choice in event["choices"]:
                    if choice["delta"].get("content"):
                        outcome.text.append(choice["delta"]["content"])
                    outcome.finish = choice["finish_reason"] or outcome.finish
    outcome.seconds = time.monotonic() - started
    return outcome


async def streams(gateway: LiveServer, key: str, bodies: list[dict[str, Any]]) -> list[Outcome]:
    url = gateway.base_url + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        jobs = [stream(client, url, key, body) for body in bodies]
        return await asyncio.wait_for(asyncio.gather(*jobs), DEADLINE_S)


def ask(text: str, max_tokens: int = 5) -> dict[str, Any]:
    return {
        "model": SIM_MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def test_an_answer_not_streamed_starts_over_elsewhere_when_its_backend_fails_part_way(
    tmp_path: Path,
) -> None:
    """A backend that fails after the first tokens of a non-streamed answer (an error event, as
    vLLM sends when its engine dies) is replaced by the other: the client, which had seen
    nothing, gets the whole answer from it, and only that answer is stored and charged; the
    failed tokens are counted as discarded. A streamed answer's client already has part of it,
    so its stream ends with the error."""
    served: list[str] = []
    fail_next = [1]  # how many of the next requests fail part-way, whichever backend they reach

    def chat(name: str) -> web.Response:
        served.append(name)
        body = ANSWER
        if fail_next[0]:
            fail_next[0] -= 1
            body = sse(delta("Went "), delta("wrong"), {"error": {"message": "engine died"}})
        return web.Response(body=body, content_type="text/event-stream")

    with gateway_over_two(tmp_path, chat) as live:
        _, key = live.new_user(plan="roomy")
        client = live.client(key)
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi?"}]
        )
        assert answer.choices[0].message.content == "Hello"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage is not None and answer.usage.completion_tokens == 3
        first, second = served
        assert first != second
        message, usage = wait_until(lambda: settled(live, answer.id))
        assert (message.status, message.content) == ("complete", "Hello")
        assert usage.completion_tokens == 3
        discarded = gateway_metric(live, "lamplighter_backend_discarded_tokens_total", first)
        assert discarded == 2
        assert gateway_metric(live, "lamplighter_backend_failovers_total", first) == 1

        fail_next[0] = 1  # the Responses API's whole answers too
        response = client.responses.create(model="m", input="Hi again?")
        assert (response.status, response.output_text) == ("completed", "Hello")

        fail_next[0] = 1
        [outcome] = asyncio.run(streams(live, key, [{**ask("Streamed?"), "model": "m"}]))
        assert outcome.text == ["Went ", "wrong"] and outcome.finish is None
        assert outcome.error is not None and outcome.error["code"] == "engine_error"
        message, usage = wait_until(lambda: settled(live, outcome.completion_id))
        assert (message.status, message.content) == ("error", "Went wrong")
        assert usage.completion_tokens == 2

        # A whole answer that both backends break off: a 503, nothing shown, nothing charged.
        fail_next[0] = 2
        with pytest.raises(openai.InternalServerError) as refused:
            client.with_options(max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Twice unlucky?"}]
            )
        assert refused.value.status_code == 503 and fail_next[0] == 0
        assert wait_until(lambda: last_usage(live)) == (0, 0, "error")


def last_usage(server: LiveServer) -> tuple[int, int, str] | None:
    """The newest usage row's tokens and finish reason, once it is settled."""

    async def load(services: Any) -> tuple[int, int, str] | None:
        from sqlalchemy import select

        from lamplighter.store.models import Usage

        async with services.db.transaction() as session:
            row = (
                await session.execute(select(Usage).order_by(Usage.created_at.desc()).limit(1))
            ).scalar_one()
            if row.finish_reason == "in_progress":
                return None
            return row.prompt_tokens, row.completion_tokens, row.finish_reason

    found: tuple[int, int, str] | None = server.call(load)
    return found


def test_a_conversation_returns_to_the_backend_that_holds_its_prefix(
    fleet: Fleet, fleet_gateway: LiveServer
) -> None:
    _, key = fleet_gateway.new_user(plan="roomy")
    client = fleet_gateway.client(key)
    homes: set[str] = set()
    for topic in ("lighthouses", "tea", "rivers", "clocks", "owls", "maps"):
        messages: list[dict[str, str]] = [{"role": "user", "content": f"Tell me about {topic}."}]
        where: list[str] = []
        for turn in range(3):
            answer, by = served_by(
                fleet,
                lambda: client.chat.completions.create(
                    model=SIM_MODEL,
                    messages=messages,  # type: ignore[arg-type]  # noqa: B023
                    max_tokens=4,
                ),
            )
            where += by
            messages += [
                {"role": "assistant", "content": answer.choices[0].message.content or ""},
                {"role": "user", "content": f"Go on ({turn})."},
            ]
        assert len(where) == 3 and len(set(where)) == 1, where
        homes |= set(where)
    # Conversations are spread; the plan may not use c.
    assert homes == {"a", "b"}
    affinity = gateway_metric(fleet_gateway, "lamplighter_routed_total", "a", ',reason="affinity"')
    assert affinity is not None and affinity >= 3


def test_a_backend_serves_only_the_plans_it_allows(fleet: Fleet, fleet_gateway: LiveServer) -> None:
    _, roomy = fleet_gateway.new_user(plan="roomy")
    _, vip = fleet_gateway.new_user(plan="vip")
    everyone = fleet_gateway.client(roomy)
    paying = fleet_gateway.client(vip)
    questions = [f"Question number {i}?" for i in range(9)]
    _, by = served_by(
        fleet,
        lambda: [everyone.chat.completions.create(**ask(q)) for q in questions],  # type: ignore[call-overload]
    )
    assert len(by) == 9 and "c" not in by
    _, by = served_by(
        fleet,
        lambda: [paying.chat.completions.create(**ask(q)) for q in questions],  # type: ignore[call-overload]
    )
    assert len(by) == 9 and "c" in by


def test_a_burst_of_one_conversation_is_spread_by_load(
    fleet: Fleet, fleet_gateway: LiveServer
) -> None:
    """Eight identical requests at once: affinity would pile them on one backend, but once it
    is full the rest go to the least loaded."""
    _, key = fleet_gateway.new_user(plan="roomy")
    outcomes, by = served_by(
        fleet, lambda: asyncio.run(streams(fleet_gateway, key, [ask("Same again.", 20)] * 8))
    )
    assert all(o.status == 200 and o.error is None and o.finish for o in outcomes)
    assert sorted(by) == ["a"] * by.count("a") + ["b"] * by.count("b") and len(by) == 8
    assert by.count("a") >= 3 and by.count("b") >= 3


def test_a_backend_killed_mid_load_loses_only_the_answers_it_had_begun(
    fleet: Fleet, fleet_gateway: LiveServer
) -> None:
    """SIGKILL one backend while it streams and more requests wait for it: those that had no
    token yet are answered by another, those it was streaming end with a clean error event
    (their partial answers stored as errors), nothing hangs; its breaker opens, and closes
    again once the process is back and a trial request succeeds."""
    _, key = fleet_gateway.new_user(plan="roomy")
    bodies = [ask(f"Tell me a long story, number {i}.", 300) for i in range(8)]
    killed = fleet["a"]
    # The load a and b published during the last test's burst, read until the next health
    # check, would send this load to the one that looks idler: wait until both look idle.
    for name in ("a", "b"):
        poll(lambda n=name: gateway_metric(fleet_gateway, "lamplighter_backend_load", n) == 0)

    async def scenario() -> list[Outcome]:
        load = asyncio.create_task(streams(fleet_gateway, key, bodies))
        deadline = time.monotonic() + DEADLINE_S
        # Kill it once both its slots are generating.
        while time.monotonic() < deadline and not load.done():
            running = await asyncio.to_thread(killed.metric, "vllm:num_requests_running")
            tokens = await asyncio.to_thread(killed.metric, "vllm:generation_tokens_total")
            if (running or 0) >= 2 and (tokens or 0) > 0:
                break
        killed.kill()
        return await load

    outcomes = asyncio.run(scenario())
    assert all(o.status == 200 and o.seconds < DEADLINE_S for o in outcomes)
    broken = [o for o in outcomes if o.error is not None]
    answered = [o for o in outcomes if o.error is None]
    # Only streams that had begun end in an error, and those cleanly: an error event, no finish.
    assert broken and all(o.text and o.finish is None for o in broken)
    assert all(o.error and o.error["code"] == "engine_error" for o in broken)
    assert all(o.finish in ("stop", "length") for o in answered)
    assert len(answered) == len(outcomes) - len(broken) >= 8 - 2
    for outcome in broken:
        message, _ = wait_until(lambda o=outcome: settled(fleet_gateway, o.completion_id))
        assert message.status == "error" and message.content == "".join(outcome.text)
    # (Whether a waiting request was sent to a between the kill and its breaker opening, and so
    # counted as a failover, is a race; a test above counts a failover for sure.)

    # Down: marked so by the health check, its breaker open, and nobody is sent there.
    poll(lambda: gateway_metric(fleet_gateway, "lamplighter_backend_up", "a") == 0)
    assert gateway_metric(fleet_gateway, "lamplighter_backend_circuit", "a") == 2
    after_kill = asyncio.run(streams(fleet_gateway, key, [ask(f"Now {i}?") for i in range(4)]))
    assert all(o.error is None and o.finish for o in after_kill)

    # Back: up again, and the breaker closes when a trial request gets through.
    killed.start()
    killed.wait_up()
    poll(lambda: gateway_metric(fleet_gateway, "lamplighter_backend_up", "a") == 1)
    client = fleet_gateway.client(key)
    attempt = iter(range(1000))

    def closed() -> bool:
        client.chat.completions.create(**ask(f"Are you back? {next(attempt)}"))  # type: ignore[call-overload]
        return gateway_metric(fleet_gateway, "lamplighter_backend_circuit", "a") == 0

    poll(closed)
    assert served(killed) >= 1
