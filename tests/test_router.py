"""Choosing a backend: the circuit breaker's state machine, published load, plan restrictions,
least-loaded by weight and prefix affinity; and an upstream's failures as the router sees them
(a real HTTP server on 127.0.0.1, ``tests/upstream_server.py``, plays the upstream)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest
from lamplighter.engines.health import Breaker, Load, parse_load
from lamplighter.engines.router import Refused, Router, Unavailable, rendezvous
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig, upstreams_from_config
from lamplighter.exceptions import ConfigError, EngineFailed, NotFound, Overloaded
from lamplighter.traffic.clock import ManualClock
from tests.upstream_server import Upstream

# -- the circuit breaker -------------------------------------------------------------------------

Op = tuple[str, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0.0)),
        st.tuples(st.just("succeeded"), st.just(0.0)),
        st.tuples(st.just("failed"), st.just(0.0)),
        st.tuples(st.just("abandoned"), st.just(0.0)),
        st.tuples(st.just("wait"), st.floats(0, 20, allow_nan=False)),
    ),
    max_size=60,
)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(ops, st.integers(1, 4), st.floats(0.5, 10, allow_nan=False))
def test_the_breaker_follows_its_rules(steps: list[Op], threshold: int, cooldown: float) -> None:
    """Against an independent account of the rules: consecutive failures open it; while open
    nothing passes until the cool-down is over; then exactly one trial at a time; a success
    closes it, a failed trial opens it again."""
    breaker = Breaker(threshold, cooldown)
    now = 0.0
    streak = 0  # consecutive failures since the last success
    open_until: float | None = None  # None: closed
    probing = False  # a trial was let through since it last opened (half-open)
    trial_out = False
    for op, dt in steps:
        assert breaker.allows(now) == (open_until is None or (now >= open_until and not trial_out))
        if op == "wait":
            now += dt
        elif op == "acquire":
            expected = open_until is None or (now >= open_until and not trial_out)
            assert breaker.acquire(now) is expected
            if expected and open_until is not None:
                probing = trial_out = True
        elif op == "succeeded":
            breaker.succeeded()
            streak, open_until, probing, trial_out = 0, None, False, False
        elif op == "failed":
            breaker.failed(now)
            if probing:  # any failure while probing: another full cool-down
                open_until, probing, trial_out = now + cooldown, False, False
            elif open_until is None:
                streak += 1
                if streak >= threshold:
                    open_until = now + cooldown
        else:
            breaker.abandoned()
            trial_out = False
        assert (breaker.state == "closed") == (open_until is None)
        assert breaker.trial == trial_out
        if breaker.state == "open":
            assert breaker.retry_after(now) == pytest.approx(max(0.0, open_until - now))  # type: ignore[operator]


def test_the_breaker_lets_one_trial_through_after_cooling_down() -> None:
    breaker = Breaker(failures_to_open=2, cooldown_s=5)
    breaker.failed(0)
    assert breaker.acquire(0)  # one failure is not enough
    breaker.failed(1)
    assert breaker.state == "open" and not breaker.acquire(5.9)
    assert breaker.retry_after(3) == pytest.approx(3)
    assert breaker.acquire(6) and not breaker.acquire(6)  # the trial, and only it
    breaker.failed(7)  # the trial failed: another full cool-down
    assert not breaker.acquire(11.9) and breaker.acquire(12)
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.acquire(12) and breaker.acquire(12)


# -- published load ------------------------------------------------------------------------------

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:prompt_tokens_total{model_name="m"} 1234.0
"""
SGLANG = """sglang:num_running_reqs{model_name="m",tp_rank="0"} 7.0
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 1.0
sglang:token_usage{model_name="m",tp_rank="0"} 0.9
"""


def test_load_is_read_from_vllm_and_sglang_metrics() -> None:
    assert parse_load(VLLM, at=1.0) == Load(running=5, waiting=4, kv_usage=0.5, at=1.0)
    assert parse_load(SGLANG, at=2.0) == Load(running=7, waiting=1, kv_usage=0.9, at=2.0)
    assert parse_load("# nothing\nprocess_cpu_seconds_total 3.0\n", at=0) is None


# -- routing -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Fake:
    """A backend as the router sees it."""

    name: str
    capacity: int = 4
    weight: float = 1.0
    plans: frozenset[str] = frozenset()
    up: bool = True
    circuit: str = "closed"
    load: Load | None = None
    models: tuple[str, ...] = ("m",)
    started: int = 0
    wait: float = 7.0

    @property
    def ready(self) -> bool:
        return self.up

    def accepting(self) -> bool:
        return self.up and self.circuit == "closed"

    def published(self) -> Load | None:
        return self.load

    def retry_after(self) -> float:
        return self.wait

    async def start(self) -> None:
        self.started += 1

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        raise NotImplementedError

    def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


@dataclass
class Busy:
    """Occupancy: what this gateway runs or queues on each backend."""

    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, name: str) -> int:
        return self.counts.get(name, 0)


def talk(*contents: str) -> tuple[Turn, ...]:
    roles = ("user", "assistant")
    return tuple(Turn(roles[i % 2], text) for i, text in enumerate(contents))


def test_only_backends_that_serve_the_model_to_the_plan_are_candidates() -> None:
    router = Router([Fake("open"), Fake("paid", plans=frozenset({"plus", "team"}))])
    for _ in range(20):
        assert router.choose("m", plan="free").backend.name == "open"
    assert {router.choose("m", plan="plus").backend.name for _ in range(20)} == {"open", "paid"}
    with pytest.raises(NotFound, match="does not exist"):
        router.choose("other", plan="free")
    only_paid = Router([Fake("paid", plans=frozenset({"plus"}))])
    with pytest.raises(NotFound, match="not available on plan 'free'") as refused:
        only_paid.choose("m", plan="free")
    assert refused.value.code == "model_not_found"


def test_a_model_only_backends_for_other_plans_serve_is_not_the_plans_to_use() -> None:
    """/v1/models and the web's model picker list ``models_for(plan)``: a model that only a
    backend kept for paying plans serves is not listed to free users, who would get a 404."""
    router = Router([Fake("open"), Fake("paid", plans=frozenset({"plus"}), models=("m", "large"))])
    assert router.models_for("free") == ["m"]
    assert router.models_for("plus") == ["m", "large"] == router.models
    with pytest.raises(NotFound) as unknown:
        router.choose("mistyped", plan="free")
    assert unknown.value.message == "The model 'mistyped' does not exist. Available: m."


def test_down_and_tripped_backends_are_skipped_and_none_left_is_a_503() -> None:
    down, tripped, fine = Fake("down", up=False), Fake("tripped", circuit="open"), Fake("fine")
    router = Router([down, tripped, fine])
    assert {router.choose("m").backend.name for _ in range(10)} == {"fine"}
    with pytest.raises(Overloaded) as refused:
        router.choose("m", exclude={"fine"})
    assert refused.value.status_code == 503 and refused.value.code == "backend_unavailable"
    assert refused.value.headers["retry-after"] == "7"
    assert "fine (tried)" in refused.value.message and "down (down)" in refused.value.message
    assert router.ready  # one ready backend serves the model
    assert not Router([down]).ready


def test_the_least_loaded_backend_by_weight_gets_the_request() -> None:
    a, b = Fake("a"), Fake("b")
    router = Router([a, b])
    assert router.choose("m", occupancy=Busy({"a": 3, "b": 1})).backend is b
    # Twice the weight: a may carry twice the load before b is preferred.
    heavy = Router([Fake("a", weight=2), b])
    assert heavy.choose("m", occupancy=Busy({"a": 3, "b": 1})).backend.name == "a"
    # The backend's own figures count (other gateways' requests are in them)...
    a.load = Load(running=4, waiting=3, kv_usage=0.1, at=0)
    assert router.choose("m", occupancy=Busy({"b": 2})).backend is b
    # ...and so does a nearly full KV cache.
    a.load = Load(running=0, waiting=0, kv_usage=0.95, at=0)
    assert router.choose("m", occupancy=Busy({"b": 2})).backend is b
    # Idle and equal: they take turns.
    fresh = Router([Fake("x"), Fake("y"), Fake("z")])
    assert [fresh.choose("m").backend.name for _ in range(6)] == ["x", "y", "z", "x", "y", "z"]


def test_a_conversation_returns_to_the_backend_that_served_it() -> None:
    backends = [Fake("a"), Fake("b"), Fake("c")]
    router = Router(backends)
    busy = Busy()
    first = router.choose("m", turns=talk("Plan a trip to Lisbon."), occupancy=busy)
    home = first.backend.name
    assert first.reason == "affinity"
    # Busier than the others, but within the slack: the follow-ups stay.
    busy.counts = {home: 2}
    for turns in (
        talk("Plan a trip to Lisbon.", "Day 1: ...", "Make it cheaper."),
        talk("Plan a trip to Lisbon.", "Day 1: ...", "Make it cheaper.", "Ok.", "And food?"),
    ):
        route = router.choose("m", turns=turns, occupancy=busy)
        assert (route.backend.name, route.reason) == (home, "affinity")
    # Full: the follow-up goes to the least loaded, which holds the conversation from then on.
    busy.counts = {home: 4}
    turns = talk("Plan a trip to Lisbon.", "Day 1: ...", "Make it cheaper.", "Ok.", "And?", "Hm")
    moved = router.choose("m", turns=turns, occupancy=busy)
    assert moved.backend.name != home and moved.reason == "least_loaded"
    busy.counts = {}
    again = router.choose("m", turns=(*turns, Turn("assistant", "x"), Turn("user", "y")))
    assert again.backend is moved.backend
    # A gateway that never saw the conversation places it where its first turns hash to, as
    # every other gateway does.
    other = Router(list(reversed(backends)))
    assert other.choose("m", turns=turns[:3]).backend.name == home


def test_a_conversation_that_queued_where_it_was_first_routed_returns_there() -> None:
    """A replica asked another backend for room before queuing (overflow) and found none: the
    conversation's next turn goes back where it ran after all, not to the one last asked."""
    router = Router([Fake("a"), Fake("b"), Fake("c")])
    asked = talk("Summarise this contract.")
    home = router.choose("m", turns=asked).backend.name
    elsewhere = router.choose("m", turns=asked, exclude={home}).backend.name
    assert elsewhere != home
    router.serves(asked, home)
    follow_up = (*asked, Turn("assistant", "It says..."), Turn("user", "Shorter?"))
    assert router.choose("m", turns=follow_up).backend.name == home


def test_rendezvous_hashing_is_stable_and_weighted() -> None:
    a, b, c = Fake("a", weight=3), Fake("b"), Fake("c")
    keys = [f"conversation-{i}" for i in range(2000)]
    placed = {key: rendezvous(key, [a, b, c]).name for key in keys}
    share = sum(1 for name in placed.values() if name == "a") / len(keys)
    assert 0.54 < share < 0.66  # 3 / 5
    without_b = {key: rendezvous(key, [c, a]).name for key in keys}
    assert all(without_b[key] == name for key, name in placed.items() if name != "b")


async def test_the_router_starts_the_health_checks() -> None:
    a, b = Fake("a"), Fake("b")
    router = Router([a, b])
    await router.start()
    assert (a.started, b.started) == (1, 1)
    assert [s.circuit for s in router.status()] == ["closed", "closed"]


# -- an upstream's failures ----------------------------------------------------------------------

REQUEST = GenerationRequest(model="m", turns=(Turn("user", "hello there"),), priority=1)
PREPARED = PreparedRequest(request=REQUEST, prompt_tokens=8, max_tokens=16)


def sse(*events: dict[str, Any] | str) -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        out += f"data: {data}\n\n".encode()
    return out


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


ANSWER = sse(
    delta("Hel"),
    delta("lo"),
    delta("", "stop"),
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    "[DONE]",
)


def upstream(server: Upstream, clock: ManualClock | None = None, **table: Any) -> UpstreamBackend:
    config = UpstreamConfig.from_table(
        {"name": "u", "url": server.url + "/v1", "models": ["m"], **table}, env={}
    )
    return UpstreamBackend(config, clock or ManualClock())


def events(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/event-stream")


async def collect(backend: UpstreamBackend) -> list[Chunk]:
    return [chunk async for chunk in backend.generate(PREPARED)]


async def test_usage_comes_from_the_upstreams_final_chunk_and_priority_is_passed() -> None:
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        bodies.append(await request.json())
        return events(ANSWER)

    async with Upstream(handler) as server:
        backend = upstream(server, priority=True)
        chunks = await collect(backend)
        await backend.close()
    assert "".join(c.text for c in chunks) == "Hello"
    assert sum(c.tokens for c in chunks) == 3 and chunks[-1].prompt_tokens == 5
    assert chunks[-1].finish_reason == "stop"
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert bodies[0]["priority"] == 1


async def test_top_p_zero_reaches_the_upstream_as_the_least_it_accepts() -> None:
    """OpenAI takes top_p 0 (only the likeliest token); vLLM and SGLang refuse it with 400, so
    the upstream is sent the smallest value above 0, which keeps the likeliest token alone."""
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        bodies.append(await request.json())
        return events(ANSWER)

    greedy = dataclasses.replace(REQUEST, top_p=0.0)
    async with Upstream(handler) as server:
        backend = upstream(server)
        chunks = [c async for c in backend.generate(dataclasses.replace(PREPARED, request=greedy))]
        await backend.close()
    assert "".join(c.text for c in chunks) == "Hello"
    assert 0 < bodies[0]["top_p"] <= 1e-6


async def test_failures_before_the_first_token_are_unavailable_and_trip_the_breaker() -> None:
    calls: list[str] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        calls.append(request.path)
        if len(calls) == 1:
            refused = web.Response(status=502, text="bad gateway")
            refused.force_close()  # no kept-alive connection: the next request must connect
            return refused
        return events(ANSWER)

    clock = ManualClock()
    async with Upstream(handler) as server:
        backend = upstream(server, clock, breaker_failures=2, breaker_cooldown_s=10)
        with pytest.raises(Unavailable, match="502"):
            await collect(backend)
        await server.refuse()  # nothing listens on its port: the connection is refused
        with pytest.raises(Unavailable, match="failed: could not connect") as refused:
            await collect(backend)
        assert "127.0.0.1" not in refused.value.message  # the host is for the log only
        await server.listen()
        assert backend.circuit == "open" and not backend.accepting()
        with pytest.raises(Unavailable, match="circuit breaker"):
            await collect(backend)
        assert len(calls) == 1  # an open breaker does not even try (the server listens again)
        assert backend.retry_after() == pytest.approx(10)
        clock.advance(10)
        assert backend.accepting()
        assert "".join(c.text for c in await collect(backend)) == "Hello"  # the trial
        assert backend.circuit == "closed" and len(calls) == 2
        await backend.close()


async def test_a_429_is_overload_and_a_400_is_not_retried_elsewhere() -> None:
    status = iter([429, 400, 400])
    refusal = {"error": {"message": "bad schema", "type": "BadRequestError", "param": "tools"}}
    bodies = iter(["no", "no", json.dumps(refusal)])

    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=next(status), headers={"retry-after": "4"}, text=next(bodies))

    async with Upstream(handler) as server:
        backend = upstream(server, breaker_failures=1)
        with pytest.raises(Overloaded) as full:
            await collect(backend)
        assert full.value.headers["retry-after"] == "4"
        with pytest.raises(Refused, match="refused the request") as bad:
            await collect(backend)
        assert not isinstance(bad.value, Unavailable) and bad.value.status_code == 400
        assert bad.value.param is None
        with pytest.raises(
            Refused, match=r"refused the request \(its parameter 'tools'\)"
        ) as named:
            await collect(backend)
        assert named.value.param == "tools"  # the upstream's own param is passed on
        assert "bad schema" not in named.value.message  # its words are the log's
        assert backend.circuit == "closed"  # the server is alive: neither opens the breaker
        await backend.close()


async def test_no_token_in_time_is_unavailable_and_a_broken_stream_is_an_engine_error() -> None:
    read = asyncio.Event()  # the client has the first token

    async def silent(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.Event().wait()  # never says anything
        return response

    async def breaks(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(delta("Hel")))
        await read.wait()
        assert request.transport is not None
        request.transport.abort()  # the connection is cut in the middle of the answer
        return response

    async def answers(_: web.BaseRequest) -> web.StreamResponse:
        return events(ANSWER)

    streams = iter([silent, breaks, answers])

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await next(streams)(request)

    async with Upstream(handler) as server:
        backend = upstream(server, first_token_timeout_s=0.05, breaker_failures=5)
        with pytest.raises(Unavailable, match="no token within"):
            await collect(backend)
        seen: list[str] = []
        with pytest.raises(EngineFailed, match="broke off") as broken:
            async for chunk in backend.generate(PREPARED):
                seen.append(chunk.text)
                read.set()
        assert seen == ["Hel"] and not isinstance(broken.value, Unavailable)
        # Said plainly: aiohttp's own words ("TransferEncodingError: 400, message='Not enough
        # data...'") are for the log, not for the client.
        assert broken.value.message == "Backend 'u' broke off in the middle of the answer."
        # The timeout counted, and the broken stream: a first token is not a success, a whole
        # answer is.
        assert backend.breaker.failures == 2
        assert "".join(c.text for c in await collect(backend)) == "Hello"
        assert backend.breaker.failures == 0
        await backend.close()


def reasoning(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]}


ERROR_EVENT = {"error": {"message": "CUDA out of memory on gpu-7.corp.internal", "code": 500}}


async def test_what_a_backend_streams_instead_of_an_answer_is_its_failure() -> None:
    """An error event (vLLM's, when its engine fails) or a body that is not a stream, before
    the first token: unavailable, so another backend is tried, and a failure for the breaker.
    After it, an error event or a body that ends without its finish reason (a proxy's timeout
    cut it) breaks the answer off; a backend that does that every time opens its breaker. Its
    own words are never the client's."""
    bodies = iter(
        [
            sse(ERROR_EVENT),
            b'{"object": "chat.completion", "choices": []}',  # stream: true ignored
            sse(delta("Hel"), ERROR_EVENT),
            sse(delta("Hel"), delta("lo")),  # no finish reason, no [DONE]: cut off
        ]
    )

    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return events(next(bodies))

    async with Upstream(handler) as server:
        backend = upstream(server, breaker_failures=4)
        for _ in range(2):
            with pytest.raises(Unavailable) as failed:
                await collect(backend)
            assert "gpu-7" not in failed.value.message
        for _ in range(2):
            with pytest.raises(EngineFailed, match="broke off") as broken:
                await collect(backend)
            assert not isinstance(broken.value, Unavailable)
            assert "gpu-7" not in broken.value.message
        assert backend.circuit == "open"  # four failures in a row, two after a first token
        await backend.close()


async def test_a_refusal_reaches_the_client_as_the_answers_text() -> None:
    said = "I'm sorry, I can't help with that."
    refusal = {"choices": [{"index": 0, "delta": {"refusal": said}, "finish_reason": None}]}

    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return events(sse(refusal, delta("", "stop"), "[DONE]"))

    async with Upstream(handler) as server:
        backend = upstream(server)
        chunks = await collect(backend)
        await backend.close()
    assert "".join(c.text for c in chunks) == said


async def test_a_reasoning_models_thinking_keeps_it_from_timing_out_but_is_not_its_answer() -> None:
    """vLLM's reasoning parser streams the thinking as ``reasoning_content`` before any answer:
    a thought longer than ``first_token_timeout_s`` is not a silent backend; but until the
    answer begins the client has nothing, so a backend that breaks off while it thinks is
    unavailable (the request goes to another)."""
    answers = [True, False]  # the second time it thinks, then ends without an answer

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(20):  # a twentieth of a second apart: a second of thinking
            await response.write(sse(reasoning("Let me think. ")))
            await asyncio.sleep(0.05)
        if answers.pop(0):
            await response.write(ANSWER)
        return response

    async with Upstream(handler) as server:
        backend = upstream(server, first_token_timeout_s=0.5)
        chunks = await collect(backend)
        assert "".join(c.text for c in chunks) == "Hello" and chunks[-1].finish_reason == "stop"
        assert chunks[0].text == "Hel"  # the thinking is not an empty first chunk
        with pytest.raises(Unavailable):
            await collect(backend)
        await backend.close()


async def test_the_health_check_reads_up_down_and_published_load() -> None:
    healthy = True

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/health":
            return web.Response(status=200 if healthy else 503)
        assert request.path == "/metrics"
        return web.Response(text=VLLM)

    clock = ManualClock(100)
    async with Upstream(handler) as server:
        backend = upstream(server, clock, health_url="/health", capacity=10, health_interval_s=60)
        await backend.start()  # checks once at once
        assert backend.ready and backend.published() == Load(5, 4, 0.5, 100)
        clock.advance(181)  # three intervals and more: stale figures are not used
        assert backend.published() is None
        healthy = False
        assert not await backend.probe.check()
        assert not backend.ready and not backend.accepting() and backend.retry_after() == 60
        await backend.close()


async def test_a_backend_found_down_ends_the_answers_it_went_silent_on() -> None:
    """A hung server: its health check fails, and the answers it has said nothing of for a
    health interval break off at once (a whole answer then starts over elsewhere) instead of
    waiting ``timeout_s`` (600 s) for their next byte; one still streaming goes on."""
    healthy = True
    talk = asyncio.Event()  # the talkative answer's next word

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/health":
            return web.Response(status=200 if healthy else 503)
        body = await request.json()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(delta("Hel")))
        if body["messages"][0]["content"] == "talkative":
            await talk.wait()
            await response.write(sse(delta("lo"), delta("", "stop"), "[DONE]"))
        else:
            await asyncio.Event().wait()  # hung
        return response

    talkative = dataclasses.replace(
        PREPARED, request=dataclasses.replace(REQUEST, turns=(Turn("user", "talkative"),))
    )
    clock = ManualClock(100)
    async with Upstream(handler) as server:
        backend = upstream(server, clock, health_url="/health", health_interval_s=5)
        await backend.start()
        hung, lively = backend.generate(PREPARED), backend.generate(talkative)
        assert (await anext(hung)).text == (await anext(lively)).text == "Hel"
        clock.advance(5)  # a health interval of silence from both
        lively_next = asyncio.ensure_future(anext(lively))
        talk.set()
        assert (await lively_next).text == "lo"  # it spoke again
        healthy = False
        assert not await backend.probe.check()
        with pytest.raises(EngineFailed, match="broke off"):
            await asyncio.wait_for(anext(hung), 5)
        assert [c.finish_reason async for c in lively][-1] == "stop"
        await backend.close()


# -- configuration -------------------------------------------------------------------------------


def test_backend_tables_are_read_with_defaults() -> None:
    [config] = upstreams_from_config(
        [
            {
                "name": "gpu-1",
                "url": "http://10.0.0.5:8000/v1/",
                "models": ["m"],
                "weight": 2,
                "plans": ["plus", "team"],
                "api_key_env": "GPU_KEY",
                "priority": True,
                "health_url": "/health",
            }
        ],
        env={"GPU_KEY": "secret"},
    )
    assert config.url == "http://10.0.0.5:8000/v1" and config.api_key == "secret"
    assert (config.weight, config.plans, config.send_priority) == (2.0, ("plus", "team"), True)
    assert config.resolved_health_url == "http://10.0.0.5:8000/health"
    assert config.resolved_metrics_url == "http://10.0.0.5:8000/metrics"
    assert (config.capacity, config.breaker_failures, config.health_interval_s) == (16, 3, 5.0)
    plain = UpstreamConfig.from_table(
        {
            "name": "o",
            "url": "http://o/v1",
            "models": ["m"],
            "metrics_url": "",
            "send_priority": 1 == 1,
        }
    )
    assert plain.resolved_health_url == "http://o/v1/models" and plain.resolved_metrics_url is None
    assert plain.send_priority


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://h/v1", "models": ["m"]}, "'name' is required"),
        ({"name": "x", "url": "h:8000", "models": ["m"]}, "'url' must be an http"),
        ({"name": "x", "url": "http://h/v1", "models": []}, "'models' must name at least one"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "capacity": 0}, "'capacity'"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "weight": 0}, "'weight' must be"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "plans": "plus"}, "'plans'"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "api_key_env": "NOPE"}, "NOPE"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "priority": "yes"}, "'priority'"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "helth_url": "/h"}, "unknown keys"),
        ({"name": "x", "url": "http://h/v1", "models": ["m"], "health_url": "h"}, "'health_url'"),
    ],
)
def test_mistakes_in_backend_tables_are_named(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        UpstreamConfig.from_table(table, env={})
    assert str(refused.value).startswith("[[backends]]")


def test_backend_names_must_be_unique() -> None:
    table = {"name": "gpu", "url": "http://h/v1", "models": ["m"]}
    with pytest.raises(ConfigError, match="more than once: \\['gpu'\\]"):
        upstreams_from_config([table, dict(table)], env={})
