"""Scale-out, proven with real processes: four ``lamplighter serve`` replicas (three failing open,
one failing closed) over one fresh PostgreSQL database and a redis-server of this module's own,
in front of four ``lamplighter sim-backend`` servers. What an operator checks:

- replicas started together on a new database all come up;
- requests racing to one backend on several replicas start at once on idle backends instead of
  queuing there;
- one user's limits hold exactly across replicas: the plan's requests_per_minute and
  concurrent_streams in all, not once per replica;
- a ``plus`` request arriving at one replica takes a busy backend's next slot ahead of a ``free``
  request that queued earlier on another;
- a backend killed mid-load: requests without a token yet are answered by another backend, none
  hangs, every replica reports it down;
- Redis killed mid-load and started again: failing open, replicas keep serving with their share of
  the limits; failing closed, they refuse at once with 503; ``lamplighter_redis_up`` says so, and
  both recover by themselves, limits shared again;
- a replica killed mid-stream: its stream leases and backend slots lapse within the lease's TTL,
  and the other replicas get the capacity back (last: it leaves the module one replica short).

The same behaviour inside one process is covered by ``tests/traffic/test_redis_state.py`` (the
Redis state, its outage policy and leases), ``tests/traffic/test_gate.py`` (the slot gate) and
``tests/traffic/test_replicas.py``; one gateway failing over between sim-backends, and its
circuit breaker, by ``tests/test_upstream.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from lamplighter.accounts import AccountService, Bootstrap
from lamplighter.settings import async_database_url
from lamplighter.store.database import Database
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import plans_from_config
from tests.fleet import (
    REDIS_SERVER,
    Gateway,
    Processes,
    RedisServer,
    SimBackend,
    count_admins,
    fresh_database,
    long_answer_seed,
    new_users,
    until,
    wait_for,
    wait_for_async,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason=f"no {REDIS_SERVER}"),
]

FLEET = "sim-fleet"  # served by s1, s2 and s3 (two slots each; s3 weighs three times as much)
SOLO = "sim-solo"  # served by solo alone, one request at a time
LEASE_TTL = 6  # LAMPLIGHTER_REDIS_LEASE_S: stream leases and backend-slot leases
DEADLINE = 30.0  # no request may take longer, whatever is killed
RPM = 6  # the "metered" plan's requests_per_minute
REPLICAS = 3  # LAMPLIGHTER_REPLICAS of the open replicas

CONFIG = f"""
# These tests hit limits on purpose; none of them is about banning whoever does.
[abuse]
threshold = 1000000

[plans.free]
queue_patience_s = 60
cache_ttl_s = 0

[plans.plus]
queue_patience_s = 60
cache_ttl_s = 0

[plans.metered]
requests_per_minute = {RPM}
tokens_per_minute = 10000000
tokens_per_day = 100000000
concurrent_streams = 100
queue_patience_s = 60
cache_ttl_s = 0

[plans.pair]
requests_per_minute = 10000
tokens_per_minute = 10000000
tokens_per_day = 100000000
concurrent_streams = 2
queue_patience_s = 60
cache_ttl_s = 0

[plans.roomy]
priority = 0
requests_per_minute = 100000
tokens_per_minute = 100000000
tokens_per_day = 1000000000
concurrent_streams = 1000
queue_patience_s = 60
cache_ttl_s = 0
"""
BACKEND: dict[str, object] = {  # every backend's settings but its capacity and weight
    "n_ctx": 16384,
    "health_url": "/health",
    "health_interval_s": 0.5,
    "breaker_failures": 2,
    "breaker_cooldown_s": 2.0,
    "connect_timeout_s": 2,
    "first_token_timeout_s": 15,
    "timeout_s": 15,
}


@dataclass
class Fleet:
    database: str
    redis: RedisServer
    sims: dict[str, SimBackend]
    open: list[Gateway]  # a, b, c: LAMPLIGHTER_REDIS_FAILURE=open, LAMPLIGHTER_REPLICAS=3
    closed: Gateway  # d: LAMPLIGHTER_REDIS_FAILURE=closed

    @property
    def replicas(self) -> list[Gateway]:
        return [*self.open, self.closed]

    def keys(self, *plans: str) -> list[str]:
        return [user.key for user in new_users(self.database, *plans)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("scale-out")
    with fresh_database() as database, Processes() as processes:
        store = processes.add(RedisServer("redis", logs))
        store.start()
        sims: dict[str, SimBackend] = {
            name: processes.add(SimBackend(name, logs, FLEET)) for name in ("s1", "s2", "s3")
        }
        # A slower GPU: its one slot stays busy long enough to queue behind.
        sims["solo"] = processes.add(SimBackend("solo", logs, SOLO, time_scale=2.0))
        config = logs / "lamplighter.toml"
        config.write_text(
            CONFIG
            + "".join(
                sim.table(
                    capacity=1 if sim.model == SOLO else 2,
                    weight=3 if sim.name == "s3" else 1,
                    **BACKEND,
                )
                for sim in sims.values()
            )
        )
        shared: dict[str, object] = {
            "config": config,
            "database_url": database,
            "redis_url": store.url,
            "replicas": REPLICAS,
            "redis_lease_s": LEASE_TTL,
            "log_level": "warning",
            "shutdown_timeout": 2,
        }
        replicas = [
            processes.add(Gateway(name, logs, redis_failure=failure, **shared))
            for name, failure in (("a", "open"), ("b", "open"), ("c", "open"), ("d", "closed"))
        ]
        store.wait_up()
        for process in [*sims.values(), *replicas]:  # all at once, as a deploy starts them
            process.start()
        for sim in sims.values():
            sim.wait_up()
        for replica in replicas:
            replica.wait_ready()
        yield Fleet(database, store, sims, replicas[:3], replicas[3])


# -- helpers ----------------------------------------------------------------------------------


def ask(content: str, model: str = FLEET, tokens: int = 3) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
    }


def long(content: str, model: str = FLEET, tokens: int = 1000) -> dict[str, Any]:
    """A request whose answer runs to all ``tokens``: it holds its slot until let go."""
    return {**ask(content, model, tokens), "seed": long_answer_seed(content, tokens)}


@asynccontextmanager
async def holding(replica: Gateway, key: str, body: dict[str, Any]) -> AsyncIterator[None]:
    """A streaming answer that has begun (its first chunk is here), held open until the block
    ends; then the client hangs up. Whatever happens to the replica meanwhile, nothing leaks."""
    async with replica.client(key) as client:
        answer = await client.chat.completions.create(**body, stream=True)
        try:
            await anext(aiter(answer))
            yield
        finally:
            with contextlib.suppress(Exception):  # a killed replica's stream is gone already
                await answer.close()


@dataclass
class Outcome:
    """How one streamed request ended, as its client saw it."""

    status: int = 200
    code: str | None = None  # the error's code: before the stream (status) or during it
    text: list[str] = field(default_factory=list)
    finish: str | None = None
    first_token_at: float | None = None
    seconds: float = 0.0
    ended_at: float = 0.0


async def stream(replica: Gateway, key: str, body: dict[str, Any]) -> Outcome:
    outcome = Outcome()
    started = time.monotonic()
    async with replica.client(key, timeout=DEADLINE) as client:
        try:
            chunks = await client.chat.completions.create(**body, stream=True)
            async for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta.content:
                        if outcome.first_token_at is None:
                            outcome.first_token_at = time.monotonic()
                        outcome.text.append(choice.delta.content)
                    outcome.finish = choice.finish_reason or outcome.finish
        except openai.APIStatusError as refused:
            outcome.status, outcome.code = refused.status_code, _code(refused.body)
        except openai.APIError as broken:  # an error event in the stream
            outcome.code = _code(broken.body)
    outcome.ended_at = time.monotonic()
    outcome.seconds = outcome.ended_at - started
    return outcome


def _code(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("code"))
    return None


async def attempt(replica: Gateway, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    """One non-streaming request: (status, response headers)."""
    async with replica.client(key) as client:
        try:
            raw = await client.chat.completions.with_raw_response.create(**body)
        except openai.APIStatusError as refused:
            return refused.status_code, refused.response.headers
        raw.parse()
        return raw.status_code, raw.headers


async def burst(replicas: list[Gateway], key: str, count: int) -> list[tuple[int, Any]]:
    """``count`` requests of one user at once, spread round-robin over ``replicas``."""
    return await asyncio.gather(
        *(attempt(replicas[i % len(replicas)], key, ask(f"Burst {i}?")) for i in range(count))
    )


def outages(replica: Gateway) -> tuple[int, int]:
    """How many Redis outages a replica logged (at ERROR) and how many recoveries."""
    lines = [line for line in replica.tail(10**7).splitlines() if "redis_state" in line]
    down = [line for line in lines if '"error"' in line and "is unreachable" in line]
    return len(down), sum("answers again" in line for line in lines)


async def everyone(replicas: list[Gateway], key: str, content: str) -> list[Outcome]:
    """One streamed question through each replica at once."""
    asked = (stream(r, key, ask(f"{content} ({r.name})")) for r in replicas)
    return await asyncio.wait_for(asyncio.gather(*asked), DEADLINE)


def everywhere(fleet: Fleet, name: str, value: float, **labels: str) -> None:
    """Wait until every live replica's /metrics shows ``name`` at ``value``."""
    for replica in fleet.replicas:
        if replica.alive:
            shows = partial(_shows, replica, name, value, labels)
            wait_for(shows, DEADLINE, f"{replica.name} shows {name}{labels or ''} {value}")


def _shows(replica: Gateway, name: str, value: float, labels: dict[str, str]) -> bool:
    return replica.metric(name, **labels) == value


# -- the tests --------------------------------------------------------------------------------


def test_replicas_started_together_on_a_new_database_all_come_up(fleet: Fleet) -> None:
    """Four replicas started at the same moment on a new database each try to store the
    configured plans and create the first admin: all four come up, with one admin between
    them, and report the database reachable."""
    for replica in fleet.replicas:
        assert replica.alive and replica.ready()
    assert count_admins(fleet.database) == 1


def test_replicas_starting_together_store_the_plans_and_the_first_admin_once() -> None:
    """What each replica does first on a new database, three at once: all succeed, one of
    them creates the admin (and says so), the others find it made."""

    async def start_three(url: str) -> list[Bootstrap | None]:
        databases = [Database(async_database_url(url)) for _ in range(3)]
        try:
            configured = plans_from_config({"extra": {"priority": 1}})
            await asyncio.gather(*(PlanBook(db).load(configured) for db in databases))
            return await asyncio.gather(
                *(AccountService(db).bootstrap_admin("admin@localhost") for db in databases)
            )
        finally:
            for db in databases:
                await db.close()

    with fresh_database() as url:
        created = asyncio.run(start_three(url))
        assert sum(bootstrap is not None for bootstrap in created) == 1
        assert count_admins(url) == 1


def test_one_users_limits_hold_exactly_across_replicas(fleet: Fleet) -> None:
    """18 requests at once, spread over three replica processes, for a plan of 6 a minute: 6
    are served, in all, and they spent one bucket (each remaining count is seen once); the
    rest are 429s. Then concurrent_streams=2: two streams on two replicas leave none on the
    third, and when one ends, exactly one more may start anywhere."""
    metered, pair = fleet.keys("metered", "pair")

    started = time.monotonic()
    results = asyncio.run(burst(fleet.open, metered, 3 * RPM))
    # The bucket gives one request back every 60 / RPM = 10 s; the burst must be quicker.
    assert time.monotonic() - started < 60 / RPM
    served = [headers for status, headers in results if status == 200]
    refused = [headers for status, headers in results if status == 429]
    assert len(served) == RPM and len(refused) == 2 * RPM, [s for s, _ in results]
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in served) == list(range(RPM))
    assert all(h["x-ratelimit-limit-requests"] == str(RPM) for h in served + refused)
    assert all(float(h["retry-after"]) > 0 for h in refused)

    a, b, c = fleet.open

    async def streams() -> None:
        async with holding(a, pair, long("Hold on, first.")):
            async with holding(b, pair, long("Hold on, second.")):
                status, _ = await attempt(c, pair, ask("A third at once?"))
                assert status == 429  # two streams in all, not two per replica

            # One ended: exactly one more may start, on any replica.
            async def another() -> bool:
                return (await attempt(c, pair, ask("Now?")))[0] == 200

            await until(another, DEADLINE, "the ended stream's slot is free on another replica")
            async with holding(c, pair, long("Hold on, third.")):
                assert (await attempt(b, pair, ask("And one more?")))[0] == 429

    asyncio.run(streams())


def test_a_better_plan_on_one_replica_starts_before_a_worse_plan_queued_on_another(
    fleet: Fleet,
) -> None:
    """solo runs one request at a time. While it is busy (a stream through replica c), a
    ``free`` request queues on replica a, then a ``plus`` request on replica b. When the slot
    frees, plus gets it, though free has waited longer and on another process."""
    a, b, c = fleet.open
    roomy, free, plus = fleet.keys("roomy", "free", "plus")

    def queued(replica: Gateway) -> bool:
        return replica.metric("lamplighter_queue_depth", backend="solo") == 1

    async def scenario() -> tuple[Outcome, Outcome]:
        async with holding(c, roomy, long("Keep the only slot busy.", SOLO)):
            first = asyncio.create_task(stream(a, free, ask("Free, waiting first.", SOLO)))
            await wait_for_async(lambda: queued(a), DEADLINE, "free waits on replica a")
            second = asyncio.create_task(stream(b, plus, ask("Plus, arriving later.", SOLO)))
            await wait_for_async(lambda: queued(b), DEADLINE, "plus waits on replica b")
            assert not first.done() and not second.done()
        return await asyncio.wait_for(asyncio.gather(first, second), DEADLINE)

    earlier, later = asyncio.run(scenario())
    assert earlier.finish and later.finish  # both were served in the end
    assert earlier.first_token_at is not None and later.first_token_at is not None
    assert later.first_token_at < earlier.first_token_at, "plus should have started first"


def test_a_backend_killed_mid_load_loses_only_the_answers_it_had_begun(fleet: Fleet) -> None:
    """12 streams over three replicas and three backends; s3 (the heaviest, so it has a queue)
    is SIGKILLed while it generates for two and a request waits for it. Requests that had no
    token yet are answered by another backend; only streams s3 had begun end, with a clean
    error event, and never more than its two slots' worth, whichever replica they came
    through. Nothing hangs, and every replica reports s3 down and stops sending it requests."""
    (roomy,) = fleet.keys("roomy")
    killed = fleet.sims["s3"]
    bodies = [long(f"Tell me story number {i:02d}.", tokens=200) for i in range(12)]

    def generating_with_a_queue() -> bool:
        running = killed.metric("vllm:num_requests_running") or 0
        if running < 2 or not killed.metric("vllm:generation_tokens_total"):
            return False
        # A request waiting on some replica for one of s3's slots: the one that must fail over.
        return any(r.metric("lamplighter_queue_depth", backend="s3") for r in fleet.open)

    async def scenario() -> list[Outcome]:
        load = asyncio.gather(
            *(stream(fleet.open[i % 3], roomy, body) for i, body in enumerate(bodies))
        )
        await wait_for_async(
            generating_with_a_queue, DEADLINE, "s3 generates for two, one waits", every=0.01
        )
        killed.kill()
        return await asyncio.wait_for(load, DEADLINE)

    outcomes = asyncio.run(scenario())
    assert all(o.status == 200 and o.seconds < DEADLINE for o in outcomes)
    broken = [o for o in outcomes if o.code is not None]
    answered = [o for o in outcomes if o.code is None]
    # Only answers s3 had begun are lost, and cleanly: some text, then an error, no finish.
    assert 1 <= len(broken) <= 2, [(o.code, len(o.text)) for o in broken]
    assert all(o.code == "engine_error" and o.text and o.finish is None for o in broken)
    assert all(o.finish == "length" for o in answered)
    failovers = sum(
        r.metric("lamplighter_backend_failovers_total", backend="s3") or 0 for r in fleet.open
    )
    assert failovers >= 1  # s3's queue went elsewhere

    everywhere(fleet, "lamplighter_backend_up", 0, backend="s3")
    after = asyncio.run(everyone(fleet.replicas, roomy, "Still there?"))
    assert all(o.status == 200 and o.code is None and o.finish for o in after)


def test_requests_racing_to_one_backend_on_several_replicas_overflow_to_idle_ones(
    fleet: Fleet,
) -> None:
    """Four long answers to the same question, asked at the same instant on replicas a, b, c
    and a again: each replica routes it to the backend the conversation hashes to, two slots,
    before any sees the others' choice. Two find it full and start at once on another backend
    instead of queuing there while the others sit idle: every answer's first token arrives
    before any answer has finished."""
    (roomy,) = fleet.keys("roomy")
    body = long("One question, asked on every replica at once.")
    on = [*fleet.open, fleet.open[0]]
    # Every replica sees the backends idle first: a load the backends published during the last
    # test's streams, read until the next health check, would make an idle one look full.
    for replica in fleet.open:
        for name in ("s1", "s2", "s3"):
            if replica.metric("lamplighter_backend_up", backend=name) == 1:
                idle = partial(_shows, replica, "lamplighter_backend_load", 0, {"backend": name})
                wait_for(idle, DEADLINE, f"{replica.name} sees {name} idle")

    async def race() -> list[Outcome]:
        asked = (stream(replica, roomy, body) for replica in on)
        return await asyncio.wait_for(asyncio.gather(*asked), DEADLINE)

    outcomes = asyncio.run(race())
    assert all(o.status == 200 and o.finish == "length" for o in outcomes)
    first_tokens = [o.first_token_at or math.inf for o in outcomes]
    assert max(first_tokens) < min(o.ended_at for o in outcomes), "one waited for another"
    overflowed = [r.metric("lamplighter_routed_total", reason="overflow") for r in fleet.open]
    assert sum(n or 0 for n in overflowed) >= 1


def test_redis_killed_mid_load_and_started_again(fleet: Fleet) -> None:
    """SIGKILL Redis while streams run, and start it again (empty) on the same port. Failing
    open, replicas a, b and c finish those streams and keep serving, each enforcing a third of
    the plan on its own, and stay ready; failing closed, d refuses at once with 503
    ``overloaded``, and its /readyz says it is not ready. Every replica shows
    lamplighter_redis_up 0 and logs it once; with Redis back they all show 1 within seconds,
    d is ready and serves again, and a burst over the replicas gets the plan's limit in all
    again."""
    roomy, during, after = fleet.keys("roomy", "metered", "metered")
    a, b, c = fleet.open
    d = fleet.closed
    everywhere(fleet, "lamplighter_redis_up", 1)
    bodies = [long(f"A long answer while Redis dies, {i}.") for i in range(3)]

    async def outage() -> list[Outcome]:
        load = []
        # One after another, each seen streaming before the next starts: every open replica
        # holds a stream when Redis dies.
        for replica, body in zip(fleet.open, bodies, strict=True):
            load.append(asyncio.create_task(stream(replica, roomy, body)))
            await wait_for_async(
                lambda r=replica: r.metric("lamplighter_active_streams") == 1,
                DEADLINE,
                f"{replica.name} streams an answer",
            )
        fleet.redis.kill()
        # Failing open: served on, by every open replica.
        served = await everyone(fleet.open, roomy, "During?")
        assert all(o.status == 200 and o.finish for o in served)
        # Failing closed: refused at once, saying why, with a retry-after.
        started = time.monotonic()
        status, headers = await attempt(d, roomy, ask("During, closed?"))
        assert (status, headers["retry-after"]) == (503, "1")
        assert time.monotonic() - started < 2.0
        refused = await stream(d, roomy, ask("During, closed, streamed?"))
        assert (refused.status, refused.code) == (503, "overloaded")
        return await asyncio.wait_for(asyncio.gather(*load), DEADLINE)

    outcomes = asyncio.run(outage())
    assert all(o.status == 200 and o.code is None and o.finish == "length" for o in outcomes)
    everywhere(fleet, "lamplighter_redis_up", 0)
    # Ready or not, as a load balancer reads it: the open replicas serve on; d refuses chat.
    assert [replica.answers("/readyz") for replica in fleet.open] == [True] * 3
    readiness = httpx.get(d.url + "/readyz", timeout=5)
    assert readiness.status_code == 503
    assert readiness.json()["checks"] == {"models": True, "database": True, "redis": False}
    # Each open replica allows its share: 6 a minute over 3 replicas is 2 here, 6 in all.
    for replica in fleet.open:
        statuses = [asyncio.run(attempt(replica, during, ask("Mine?")))[0] for _ in range(4)]
        assert statuses == [200, 200, 429, 429], replica.name
    for replica in fleet.replicas:
        assert outages(replica) == (1, 0), replica.name  # loudly, and once per outage

    fleet.redis.start()
    fleet.redis.wait_up()
    everywhere(fleet, "lamplighter_redis_up", 1)
    assert d.answers("/readyz")
    assert asyncio.run(attempt(d, roomy, ask("Back?")))[0] == 200
    results = asyncio.run(burst([a, b, c, d], after, 3 * RPM))
    assert sorted(status for status, _ in results) == [200] * RPM + [429] * 2 * RPM
    # One outage, one recovery, whatever the replicas did since: the connections they kept from
    # before the restart started no new outage.
    for replica in fleet.replicas:
        assert outages(replica) == (1, 1), replica.name


async def answers_to(database: str, questions: list[str]) -> list[tuple[str, str, str]]:
    """For each question, its stored answer's status and finish reason and its usage row's
    finish reason."""
    db = Database(async_database_url(database))
    try:
        async with db.read() as conn:
            found = await conn.execute(
                text(
                    "SELECT q.content, a.status, a.finish_reason, u.finish_reason "
                    "FROM messages q JOIN messages a ON a.parent_id = q.id "
                    "JOIN usage u ON u.message_id = a.id WHERE q.content = ANY(:questions)"
                ),
                {"questions": questions},
            )
            rows = {row[0]: (row[1], row[2], row[3]) for row in found}
    finally:
        await db.close()
    return [rows[question] for question in questions]


def test_a_replica_killed_mid_stream_gives_its_slots_back_within_the_lease(fleet: Fleet) -> None:
    """Replica c streams two answers of a user whose plan allows two at once, and one on solo,
    which takes its only slot; another user waits for solo on b. SIGKILL c: its leases run on
    for a while (the user can start nothing on a, the waiter still waits), and lapse within
    the lease's TTL: the waiter starts, and the user can run two streams again elsewhere.
    The answers c was writing are settled by the replicas left once c has been silent for two
    leases (cut, their usage interrupted), and not before."""
    a, b, c = fleet.open
    pair, holder, waiter = fleet.keys("pair", "roomy", "roomy")
    on_c = ["First of two on c.", "Second of two on c.", "The only slot of solo, on c."]

    async def scenario() -> tuple[Outcome, float]:
        async with (
            holding(c, pair, long(on_c[0])),
            holding(c, pair, long(on_c[1])),
            holding(c, holder, long(on_c[2], SOLO)),
        ):
            waiting = asyncio.create_task(stream(b, waiter, ask("Waiting on b.", SOLO)))
            await wait_for_async(
                lambda: b.metric("lamplighter_queue_depth", backend="solo") == 1,
                DEADLINE,
                "the waiter queues on b",
            )
            c.kill()
            killed = time.monotonic()
            # A dead replica's leases are not given back: they lapse, and the refusal says when
            # (at least the two thirds of a TTL a renewed lease has left), not "in a second".
            status, headers = await attempt(a, pair, ask("May I, on a?"))
            assert status == 429 and int(headers["retry-after"]) >= LEASE_TTL * 2 / 3 - 1
            assert int(headers["retry-after"]) <= LEASE_TTL
            assert not waiting.done()
            assert b.metric("lamplighter_queue_depth", backend="solo") == 1
            outcome = await asyncio.wait_for(waiting, LEASE_TTL + DEADLINE)

            async def settled() -> bool:
                left = await answers_to(fleet.database, on_c)
                return left == [("cut", "interrupted", "interrupted")] * 3

            await until(settled, 2 * LEASE_TTL + DEADLINE, "c's answers are cut", every=0.5)
            # Not before c had been silent for two leases (it last spoke at most a third of
            # one before it died).
            assert time.monotonic() - killed >= 2 * LEASE_TTL - LEASE_TTL / 3
        return outcome, killed

    outcome, killed = asyncio.run(scenario())
    assert outcome.status == 200 and outcome.finish and outcome.first_token_at is not None
    # The slot came back no later than a lease's TTL after the replica's last renewal.
    assert outcome.first_token_at - killed < LEASE_TTL + 3.0

    async def two_at_once() -> None:
        async with (
            holding(a, pair, long("Mine again, on a.")),
            holding(b, pair, long("And on b.")),
        ):
            assert (await attempt(a, pair, ask("A third?")))[0] == 429

    def both_streams() -> bool:
        try:
            asyncio.run(two_at_once())
        except openai.RateLimitError:
            return False
        return True

    wait_for(both_streams, LEASE_TTL, "the user's two streams are theirs again", every=0.5)
