"""RedisState against a real Redis: limits and stream caps hold exactly across replicas and
processes, verdicts are the same as MemoryState's, a dead replica's leases lapse while a live
one's are renewed, and an outage follows the configured policy and ends by itself."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.exceptions import ConfigError, Overloaded, RateLimited
from lamplighter.settings import Settings, load_settings
from lamplighter.telemetry.metrics import Metrics
from lamplighter.traffic.clock import SystemClock
from lamplighter.traffic.limiters import Rate
from lamplighter.traffic.plans import Plan
from lamplighter.traffic.ratelimits import RateLimiter
from lamplighter.traffic.redis_state import RedisState
from lamplighter.traffic.state import Limit, MemoryState
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.fleet import REDIS_URL, RedisServer, needs_redis
from tests.traffic import redis_worker
from tests.traffic.redis_worker import give_back_slot, take_slot

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400.0


pytestmark = needs_redis


async def forget(prefix: str, url: str = REDIS_URL) -> None:
    """Delete a test's keys (they would expire anyway)."""
    async with Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    await forget(prefix)


def worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.traffic.redis_worker", *args]


async def poll(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait until ``condition()`` is true, failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


# -- exact across replicas -------------------------------------------------------------------


async def test_limits_hold_exactly_across_four_processes(prefix: str) -> None:
    """Four replicas, each its own OS process and connection, race for one user's buckets:
    together they get exactly what the plan allows, and a refused request spends nothing."""
    processes = [
        await asyncio.create_subprocess_exec(
            *worker("hammer", REDIS_URL, prefix, "40"), cwd=ROOT, stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    async with Redis.from_url(REDIS_URL) as client:
        await client.rpush(redis_worker.go_key(prefix), *["go"] * 4)  # all start at once
    outputs = [await asyncio.wait_for(p.communicate(), 60) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4
    allowed = sum(int(out) for out, _ in outputs)
    requests, tokens = redis_worker.LIMITS
    # 500 tokens at 7 a request: 71 requests, whichever process sent them.
    assert allowed == 71
    async with RedisState(REDIS_URL, prefix=prefix) as state:
        # The 89 refused attempts spent neither requests nor tokens.
        assert (await state.peek([requests], 0.0))[0][0] == 100 - 71
        assert (await state.peek([tokens], 0.0))[0][0] == 500 - 71 * 7


async def test_stream_caps_and_limits_hold_exactly_across_racing_replicas(prefix: str) -> None:
    # Generous timeouts: this is about atomicity, and 180 calls at once on a busy machine can
    # take longer than the production 0.25 s to connect.
    replicas = [RedisState(REDIS_URL, prefix=prefix, timeout=5.0) for _ in range(5)]
    try:
        racers = [replicas[i % 5] for i in range(60)]
        leases = await asyncio.gather(*(take_slot(state, "u", 7) for state in racers))
        held = [(state, lease) for state, lease in zip(racers, leases, strict=True) if lease]
        assert len(held) == 7
        # A slot given back goes to exactly one of the next racers.
        await give_back_slot(held[0][0], "u", held[0][1])
        again = await asyncio.gather(*(take_slot(state, "u", 7) for state in racers))
        assert sum(lease is not None for lease in again) == 1

        # Settling a request gives its slot back in the same call as its unused tokens.
        state, lease = held[1]
        await state.settle([], 0.0, ("u", lease))
        again = await asyncio.gather(*(take_slot(state, "u", 7) for state in racers))
        assert sum(lease is not None for lease in again) == 1

        limit = Limit("u:requests", "requests", Rate(37, DAY), 1)
        verdicts = await asyncio.gather(*(state.reserve([limit], 0.0) for state in racers * 3))
        assert sum(v.granted for v in verdicts) == 37
    finally:
        for state in replicas:
            await state.stop()


# -- the same verdicts as MemoryState ---------------------------------------------------------

# A few plans' limits, so that a change is often a real one, and any limit at all.
rates = st.one_of(
    st.sampled_from(
        [
            *(Rate(10, 60), Rate(25, 60), Rate(5, 60, burst=8), Rate(3, 1), Rate(7, 1, burst=2)),
            *(Rate(100, DAY), Rate(40, DAY, burst=60)),
        ]
    ),
    st.builds(
        Rate,
        rate=st.integers(min_value=1, max_value=50).map(float),
        period=st.sampled_from([1.0, 60.0, DAY]),
        burst=st.one_of(st.none(), st.integers(min_value=1, max_value=80).map(float)),
    ),
)
KEYS = range(3)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=10)),
        st.tuples(
            st.just("reserve"),
            st.lists(
                st.tuples(st.sampled_from(KEYS), st.integers(min_value=0, max_value=12)),
                min_size=1,
                max_size=3,
                unique_by=lambda pair: pair[0],
            ),
            st.one_of(st.none(), st.integers(min_value=1, max_value=3)),  # a stream cap, if any
        ),
        st.tuples(st.just("end"), st.integers(min_value=0, max_value=5)),  # a stream ends
        st.tuples(
            st.just("settle"),
            st.lists(
                st.tuples(st.sampled_from(KEYS), st.integers(0, 12)),
                min_size=1,
                max_size=3,
                unique_by=lambda pair: pair[0],
            ),
        ),
        st.tuples(st.just("peek"), st.sampled_from(KEYS)),
        st.tuples(st.just("change"), st.sampled_from(KEYS), rates),  # a plan edited live
    ),
    min_size=1,
    max_size=30,
)


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(st.lists(rates, min_size=len(KEYS), max_size=len(KEYS)), steps)
def test_redis_and_memory_give_identical_verdicts(
    initial: list[Rate], sequence: list[tuple[object, ...]]
) -> None:
    asyncio.run(_replay(initial, sequence))


async def _replay(initial: list[Rate], sequence: list[tuple[object, ...]]) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    shared = RedisState(REDIS_URL, prefix=prefix, use_server_time=False, timeout=5.0)
    memory = MemoryState()
    rate = list(initial)
    now = 1_700_000_000.0  # a server-sized clock, so precision is tested where it matters

    def limit(key: object, cost: object = 0) -> Limit:
        assert isinstance(key, int) and isinstance(cost, int)
        return Limit(f"u:{key}", "n", rate[key], cost)

    streams: list[tuple[str, str]] = []  # the leases each state holds, in the same order
    try:
        for step in sequence:
            match step:
                case ("wait", float(seconds)):
                    now += seconds
                case ("change", int(key), Rate() as new):
                    rate[key] = new
                case ("reserve", list(costs), most):
                    limits = [limit(key, cost) for key, cost in costs]
                    stream = None if most is None else ("s", most)
                    got = await shared.reserve(limits, now, stream)
                    expected = await memory.reserve(limits, now, stream)
                    assert got.verdicts == expected.verdicts, step
                    assert got.standing == expected.standing, step
                    assert got.no_stream_slot == expected.no_stream_slot, step
                    assert (got.lease is None) == (expected.lease is None), step
                    if got.lease is not None and expected.lease is not None:
                        streams.append((got.lease, expected.lease))
                case ("end", int(which)):
                    if streams:
                        ours, theirs = streams.pop(which % len(streams))
                        await shared.settle([], now, ("s", ours))
                        await memory.settle([], now, ("s", theirs))
                case ("settle", list(given_back)):
                    refunds = [(limit(key), float(units)) for key, units in given_back]
                    await shared.settle(refunds, now)
                    await memory.settle(refunds, now)
                    touched = [limit(key) for key, _ in given_back]
                    assert await shared.peek(touched, now) == await memory.peek(touched, now)
                case ("peek", key):
                    assert await shared.peek([limit(key)], now) == await memory.peek(
                        [limit(key)], now
                    )
                case _:
                    raise AssertionError(f"unknown step {step}")
        assert shared.errors == 0
    finally:
        await shared.stop()
        await forget(prefix)


# -- leases -----------------------------------------------------------------------------------


async def test_a_lease_given_back_while_its_renewal_is_on_the_way_stays_given_back(
    prefix: str,
) -> None:
    """The renewal re-takes a lease it finds gone when its set has room (for one that lapsed
    while Redis was away). A stream that ends while its renewal is in flight must not be
    brought back by it: the slot would look taken for a whole TTL."""
    async with (
        RedisState(REDIS_URL, prefix=prefix) as live,
        RedisState(REDIS_URL, prefix=prefix) as probe,
    ):
        lease = await take_slot(live, "u", 1)
        assert lease is not None
        renew, given_back = live._renew, asyncio.Event()

        async def late(**kwargs: Any) -> Any:  # the renewal reaches Redis after the give-back
            await given_back.wait()
            return await renew(**kwargs)

        live._renew = late  # type: ignore[assignment]
        renewing = asyncio.create_task(live._renew_held())
        await asyncio.sleep(0)  # it has taken its list of the leases held
        await give_back_slot(live, "u", lease)
        given_back.set()
        await renewing
        assert await take_slot(probe, "u", 1) is not None


async def test_a_dead_replicas_slots_lapse_and_a_live_ones_are_renewed(prefix: str) -> None:
    ttl = 3.0  # renewed every second: only a stall of two would lose the live lease
    async with (
        RedisState(REDIS_URL, prefix=prefix, lease_ttl=ttl, timeout=5.0) as live,
        RedisState(REDIS_URL, prefix=prefix, lease_ttl=ttl, timeout=5.0) as probe,
    ):
        kept = await take_slot(live, "u", 2)
        since = time.monotonic()
        doomed = await asyncio.create_subprocess_exec(
            *worker("hold", REDIS_URL, prefix, "u", "2", str(ttl)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert doomed.stdout is not None
        assert await asyncio.wait_for(doomed.stdout.readline(), 30) == b"held\n"
        assert await take_slot(probe, "u", 2) is None  # both slots are held
        doomed.kill()  # SIGKILL: no chance to give anything back
        await doomed.wait()
        killed = time.monotonic()
        assert await take_slot(probe, "u", 2) is None  # its lease runs on for a while
        # A refusal says when the soonest lease lapses unless renewed: a dead replica's slot
        # is free then (the client is told to wait that long, not a second).
        full = await probe.reserve([], 0.0, ("u", 2))
        assert full.no_stream_slot and full.slot_lapses_in is not None
        assert 0 < full.slot_lapses_in <= ttl

        freed: list[str] = []

        async def reclaim() -> bool:
            lease = await take_slot(probe, "u", 2)
            if lease is not None:
                freed.append(lease)
            return lease is not None

        deadline = killed + 5 * ttl
        while not await reclaim():
            assert time.monotonic() < deadline, "the dead replica's slot never came back"
            await asyncio.sleep(0.05)
        await give_back_slot(probe, "u", freed[0])

        # Past three TTLs, the live replica's slot is still its own: only the dead one's frees.
        while time.monotonic() < since + 3 * ttl:
            lease = await take_slot(probe, "u", 2)
            assert lease is not None
            assert await take_slot(probe, "u", 2) is None
            await give_back_slot(probe, "u", lease)
            await asyncio.sleep(0.1)
        assert kept is not None
        await give_back_slot(live, "u", kept)
        assert None not in [await take_slot(probe, "u", 2) for _ in range(2)]


# -- Redis going away -------------------------------------------------------------------------


def gauge(metrics: Metrics, name: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


async def test_an_outage_fails_open_to_a_share_or_closed_and_recovers_by_itself(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lamplighter.traffic.redis_state")
    daily = Limit("u:requests", "requests", Rate(10, DAY), 1)
    metrics = Metrics()
    async with (
        RedisState(redis_server.url, replicas=2, retry_interval=0.2) as open_,
        RedisState(redis_server.url, failure="closed", retry_interval=0.2) as closed,
    ):
        metrics.watch_redis(open_)
        assert [(await open_.reserve([daily], 0.0)).granted for _ in range(3)] == [True] * 3
        assert gauge(metrics, "lamplighter_redis_up") == 1.0

        redis_server.stop()
        # Failing open, this replica allows its share: 10 a day over 2 replicas is 5 here,
        # whatever the shared bucket had left.
        verdicts = [(await open_.reserve([daily], 0.0)).granted for _ in range(8)]
        assert verdicts == [True] * 5 + [False] * 3
        assert gauge(metrics, "lamplighter_redis_up") == 0.0
        assert gauge(metrics, "lamplighter_redis_errors_total") >= 1
        leases = [await take_slot(open_, "u", 3) for _ in range(3)]
        assert [lease is not None for lease in leases] == [True, True, False]  # ceil(3 / 2)
        # Headers and refusals name the share, not the plan's limits this replica cannot give.
        limiter = RateLimiter(open_, SystemClock())
        plan = Plan("p", requests_per_minute=20, tokens_per_minute=1000, concurrent_streams=3)
        user = uuid.uuid4()
        for _ in range(2):
            reservation = await limiter.reserve(plan, user, 10)
            assert reservation.headers["x-ratelimit-limit-requests"] == "10"
            assert reservation.headers["x-ratelimit-limit-tokens"] == "500"
        with pytest.raises(RateLimited, match="the limit is 2 at a time"):
            await limiter.reserve(plan, user, 10)
        enforced, most = open_.in_force([daily], 3)
        assert (enforced[0].rate.capacity, most) == (5, 2)
        assert closed.in_force([daily], 3) == ([daily], 3)  # it refuses all: nothing to share
        # Failing closed, it refuses with a 503 that says why.
        with pytest.raises(Overloaded, match="Redis"):
            await closed.reserve([daily], 0.0)
        with pytest.raises(Overloaded):
            await take_slot(closed, "u", 3)
        assert await closed.peek([daily], 0.0) == [(0, 0.2)]  # headers: nothing to spend for now
        ours = [r for r in caplog.records if r.name == "lamplighter.traffic.redis_state"]
        assert [r.levelno for r in ours] == [
            logging.ERROR
        ] * 2  # once per state and outage, however many calls failed

        redis_server.start()  # empty: Redis keeps nothing across restarts here
        redis_server.wait_up()
        await poll(lambda: open_.up and closed.up, 5, "both states see Redis again")
        assert gauge(metrics, "lamplighter_redis_up") == 1.0
        ours = [r for r in caplog.records if r.name == "lamplighter.traffic.redis_state"]
        assert [r.levelno for r in ours] == [logging.ERROR] * 2 + [logging.WARNING] * 2
        for lease in leases:
            if lease is not None:
                await give_back_slot(open_, "u", lease)
        # Shared again: the two replicas together get the plan's 10, not 5 each.
        together = [(await state.reserve([daily], 0.0)).granted for state in [open_, closed] * 6]
        assert sum(together) == 10
        [(remaining, refilled_in)] = await closed.peek([daily], 0.0)
        assert remaining == 0
        assert refilled_in == pytest.approx(DAY, abs=60)


# -- wired into the app ------------------------------------------------------------------------

TIGHT_PLAN = """
[plans.tight]
requests_per_minute = 3
cache_ttl_s = 0
"""


def test_two_gateway_replicas_share_a_plans_limits(tmp_path: Path) -> None:
    """Two servers with one database and LAMPLIGHTER_REDIS_URL: a user who alternates between
    them gets the plan's 3 requests a minute in all, not 3 from each."""
    config = tmp_path / "lamplighter.toml"
    config.write_text(TIGHT_PLAN)

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    def replica() -> LiveServer:
        shared = {"redis_url": REDIS_URL, "replicas": 2, "embedded_engine": False}
        return LiveServer(make_settings(tmp_path, config=config, **shared), backends)

    with replica() as first, replica() as second:
        _, key = first.new_user(plan="tight")
        answers = []
        for server in [first, second] * 3:
            try:
                server.client(key).chat.completions.create(
                    model=SCRIPTED, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                answers.append(200)
            except openai.RateLimitError:
                answers.append(429)
        assert answers == [200, 200, 200, 429, 429, 429]
        assert "lamplighter_redis_up 1.0" in httpx.get(f"{second.base_url}/metrics").text
        first.close_clients()
        second.close_clients()


# -- settings ---------------------------------------------------------------------------------


def test_redis_settings_are_read_and_checked() -> None:
    settings = load_settings(
        env={"LAMPLIGHTER_REDIS_FAILURE": "closed", "LAMPLIGHTER_REPLICAS": "3"}
    )
    assert (settings.redis_failure, settings.replicas) == ("closed", 3)
    assert (load_settings(env={}).redis_failure, load_settings(env={}).replicas) == ("open", 1)
    with pytest.raises(ConfigError, match="redis_failure"):
        load_settings(env={"LAMPLIGHTER_REDIS_FAILURE": "sideways"})
    with pytest.raises(ConfigError, match="replicas"):
        load_settings(env={"LAMPLIGHTER_REPLICAS": "0"})
