"""Backend slots shared by replicas through the real Redis: each ``Admission`` below is one
replica (its own queue and its own ``SlotGate``), all in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from lamplighter.exceptions import Overloaded
from lamplighter.traffic.admission import Admission, Slot
from lamplighter.traffic.bulletin import Bulletin
from lamplighter.traffic.clock import SystemClock
from lamplighter.traffic.gate import SlotGate
from lamplighter.traffic.plans import Plan
from tests.fleet import REDIS_URL

FREE = Plan("free", priority=2, queue_patience_s=20)
PLUS = Plan("plus", priority=1, queue_patience_s=20)


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis = Redis.from_url(REDIS_URL)
    yield redis
    await redis.aclose()


Fleet = Callable[..., Awaitable[list[Admission]]]


@pytest.fixture
async def replicas(client: Redis) -> AsyncIterator[Fleet]:
    """Makes ``count`` replicas that tell each other when a slot frees through a bulletin of
    their own (on a channel of the test's own), as in the gateway; every replica made is closed
    after the test, passed or failed."""
    made: list[Admission] = []
    bulletins: list[Bulletin] = []
    channel = f"test:{uuid.uuid4().hex}:bulletin"

    async def make(count: int, lease_ttl: float = 15.0) -> list[Admission]:
        fleet: list[Admission] = []
        for _ in range(count):
            bulletin = Bulletin(REDIS_URL, channel=channel)
            # Generous: these tests are about sharing slots, not a slow machine's Redis calls
            # falling back to a replica's own share after a quarter second.
            gate = SlotGate(
                client,
                lease_ttl=lease_ttl,
                timeout_s=10.0,
                announce=partial(_announcement, bulletin),
            )
            admission = Admission(SystemClock(), gate=gate, replicas=count)
            bulletin.on("slot", partial(_wake, admission))
            await bulletin.start()
            await asyncio.wait_for(bulletin.subscribed.wait(), 10)
            bulletins.append(bulletin)
            fleet.append(admission)
        made.extend(fleet)
        return fleet

    yield make
    for replica in made:
        await replica.close()
    for bulletin in bulletins:
        await bulletin.stop()


def _announcement(bulletin: Bulletin, pool: str) -> tuple[str, str]:
    return bulletin.envelope("slot", pool=pool)


async def _wake(admission: Admission, message: dict[str, Any]) -> None:
    admission.wake(str(message["pool"]))


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


async def test_a_backends_capacity_holds_across_replicas(replicas: Fleet) -> None:
    backend = f"gpu-{uuid.uuid4().hex}"
    fleet = await replicas(3)
    running = 0
    most = 0
    done = 0

    async def request(replica: Admission) -> None:
        nonlocal running, most, done
        slot = await replica.pool(backend, 2).enter(uuid.uuid4().hex, FREE, 10)
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)  # generating
        running -= 1
        slot.release(10)
        done += 1

    await asyncio.gather(*(request(fleet[n % 3]) for n in range(15)))
    assert (done, most) == (15, 2)
    assert await fleet[0].gate.running(backend) == 0  # type: ignore[union-attr]


async def test_a_better_plan_on_another_replica_goes_first(replicas: Fleet) -> None:
    """Replica A holds the only slot and has a free request waiting; a plus request then
    arrives at replica B. When the slot frees, B's plus request takes it."""
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2)
    order: list[str] = []

    async def request(replica: Admission, plan: Plan, name: str) -> Slot:
        slot = await replica.pool(backend, 1).enter(name, plan, 10)
        order.append(name)
        return slot

    holder = await request(first, FREE, "holder")
    waiting_free = asyncio.create_task(request(first, FREE, "free"))
    await until(lambda: backend in first.pools and first.pools[backend].queued == 1)
    waiting_plus = asyncio.create_task(request(second, PLUS, "plus"))
    await until(lambda: backend in second.pools and second.pools[backend].queued == 1)
    holder.release(10)
    (await waiting_plus).release(10)
    (await waiting_free).release(10)
    assert order == ["holder", "plus", "free"]


async def test_a_dead_replicas_slot_lapses_and_a_waiter_elsewhere_gets_it(replicas: Fleet) -> None:
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2, lease_ttl=1.0)
    await first.pool(backend, 1).enter("doomed", FREE, 10)
    await first.close()  # the replica dies holding the slot: nobody renews or releases it
    started = time.monotonic()
    slot = await second.pool(backend, 1).enter("survivor", FREE, 10)
    waited = time.monotonic() - started
    assert 0.5 < waited < 5.0  # the lease's TTL, give or take a poll
    slot.release(10)


async def test_a_backend_nobody_uses_leaves_nothing_in_redis(
    replicas: Fleet, client: Redis
) -> None:
    """Two replicas die, one holding a backend's slot, the other waiting for it, and nobody
    asks for that backend again (it was taken out of the configuration): its keys in Redis live
    no longer than the lease, instead of holding the dead replicas' entries for ever."""
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2, lease_ttl=0.6)
    await first.pool(backend, 1).enter("holder", FREE, 10)
    waiter = asyncio.create_task(second.pool(backend, 1).enter("waiter", FREE, 10))
    keys = SlotGate._keys(backend)  # running, heads, alive, meta
    await until_async(lambda: client.exists(*keys), len(keys))
    assert all([0 < await client.pttl(key) <= 600 for key in keys])
    await first.close()  # both die: nobody releases, renews or withdraws anything
    await second.close()
    await until_async(lambda: client.exists(*keys), 0)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter


async def test_a_live_replica_keeps_its_slot_past_the_lease(replicas: Fleet) -> None:
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2, lease_ttl=0.6)
    held = await first.pool(backend, 1).enter("long answer", FREE, 10)
    patient = Plan("free", priority=2, queue_patience_s=2.0)
    with pytest.raises(Overloaded):  # three leases long, and the slot never came free
        await second.pool(backend, 1).enter("waiter", patient, 10)
    held.release(10)


async def test_a_slot_redis_lost_is_added_back_by_the_replica_that_holds_it(
    client: Redis, replicas: Fleet
) -> None:
    """Redis restarted empty while a request runs: its replica's next renewal puts the slot
    back, so another replica cannot start a second request on a one-slot backend."""
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2, lease_ttl=0.6)
    held = await first.pool(backend, 1).enter("long answer", FREE, 10)
    gate = first.gate
    assert gate is not None
    await client.delete(f"lamplighter:pool:{backend}:running")  # what a restart forgets
    assert await gate.running(backend) == 0
    deadline = time.monotonic() + 5
    while await gate.running(backend) == 0:
        assert time.monotonic() < deadline, "the slot was never added back"
        await asyncio.sleep(0.02)
    patient = Plan("free", priority=2, queue_patience_s=1.0)
    with pytest.raises(Overloaded):
        await second.pool(backend, 1).enter("second", patient, 10)
    held.release(10)
    deadline = time.monotonic() + 5
    while await gate.running(backend) != 0:  # released, and not added back by a late renewal
        assert time.monotonic() < deadline, "the finished request's slot stayed taken"
        await asyncio.sleep(0.02)


async def test_without_redis_a_replica_uses_its_share_of_the_backend() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    fleet = [Admission(SystemClock(), gate=SlotGate(dead), replicas=2) for _ in range(2)]
    pool = fleet[0].pool(f"gpu-{uuid.uuid4().hex}", 4)
    # No slot taken elsewhere while Redis is away, and nobody asks it again before queuing
    # (each try could cost a timeout) until an admission through it succeeds.
    assert pool.gate is not None and pool.gate.answering
    assert await pool.try_enter("early", FREE, 1) is None
    assert not pool.gate.answering
    slots = [await pool.enter(f"user{n}", FREE, 1) for n in range(2)]
    patient = Plan("free", priority=2, queue_patience_s=0.5)
    with pytest.raises(Overloaded):  # 4 slots, 2 replicas: this one's share is 2
        await pool.enter("third", patient, 1)
    for slot in slots:
        slot.release(1)
    for replica in fleet:
        await replica.close()
    await dead.aclose()


async def test_a_replica_takes_a_free_slot_at_once_but_never_one_somebody_waits_for(
    replicas: Fleet,
) -> None:
    """``try_enter`` (what a replica asks before it queues, to look for room elsewhere): a slot
    at once while the backend has one free, None, queuing nothing, once it is full or while a
    request waits for it on another replica; and a slot taken so is renewed like any other."""
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2, lease_ttl=0.6)
    gate = first.gate
    assert gate is not None
    taken = await first.pool(backend, 2).try_enter("quick", FREE, 10)
    assert taken is not None and await gate.running(backend) == 1
    held = await second.pool(backend, 2).enter("holder", FREE, 10)
    assert await first.pools[backend].try_enter("late", PLUS, 10) is None  # full
    assert first.pools[backend].queued == 0
    waiting = asyncio.create_task(second.pools[backend].enter("waiter", FREE, 10))
    await until(lambda: second.pools[backend].queued == 1)
    held.release(10)  # the waiter's slot, not the next one to ask
    assert await first.pools[backend].try_enter("late", FREE, 10) is None
    (await waiting).release(10)
    # Its lease is renewed while it runs: three leases on, the backend is still full.
    patient = Plan("free", priority=2, queue_patience_s=2.0)
    tail = await second.pools[backend].enter("tail", FREE, 10)
    with pytest.raises(Overloaded):
        await second.pools[backend].enter("one too many", patient, 10)
    taken.release(10)
    tail.release(10)
    await until_async(lambda: gate.running(backend), 0)


async def test_a_freed_slot_is_announced_only_while_a_replica_waits_for_one(
    replicas: Fleet, client: Redis
) -> None:
    """Releasing a slot tells the other replicas only when one of them has a request waiting:
    a fleet's announcements follow its queueing, not its traffic times its replicas."""
    backend = f"gpu-{uuid.uuid4().hex}"
    first, second = await replicas(2)
    gate = first.gate
    assert gate is not None and gate.announce is not None
    channel = gate.announce(backend)[0]
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        for n in range(10):  # nobody waits: nothing is announced
            (await first.pool(backend, 2).enter(f"u{n}", FREE, 10)).release(10)
        held = [await first.pools[backend].enter(f"h{n}", FREE, 10) for n in range(2)]
        waiting = asyncio.create_task(second.pool(backend, 2).enter("waiter", FREE, 10))
        heads = gate._keys(backend)[1]
        await until_async(lambda: client.zcard(heads), 1)  # its head is forward in Redis
        held[0].release(10)  # a replica waits: announced, and its request gets the slot
        (await waiting).release(10)
        held[1].release(10)
        await until_async(lambda: gate.running(backend), 0)
        await client.publish(channel, "end")  # after every release above, on the same channel
        heard: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the end of the test's messages never came"
            message = await pubsub.get_message(timeout=1)
            if message is None or message["type"] != "message":
                continue
            if message["data"] == b"end":
                break
            heard.append(json.loads(message["data"]))
    assert [(m["topic"], m["pool"]) for m in heard] == [("slot", backend)]


async def until_async(value: Callable[[], Awaitable[int]], wanted: int) -> None:
    deadline = time.monotonic() + 5.0
    while await value() != wanted:
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


# (replica, priority, release one running ticket first, take instead of putting a head forward)
Step = tuple[int, int, bool, bool]


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    capacity=st.integers(1, 3),
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2), st.booleans(), st.booleans()),
        max_size=25,
    ),
)
async def test_the_gate_never_overfills_and_never_skips_a_better_head(
    capacity: int, steps: list[Step]
) -> None:
    """Each step: a replica puts a head of some priority forward, or takes a slot without
    queuing (maybe after one running ticket finishes). Whatever the interleaving, at most
    ``capacity`` run, a head gets a slot only if the better heads waiting elsewhere leave one
    for it, the single best head gets any free slot, and a take gets one exactly when a slot
    is left after every head of its priority or better has had one."""
    redis = Redis.from_url(REDIS_URL)
    pool = f"gpu-{uuid.uuid4().hex}"
    # The maths under test, not Redis's latency: a busy machine may take longer than the
    # quarter second after which a replica falls back to its own share.
    gates = [SlotGate(redis, timeout_s=10.0) for _ in range(3)]
    heads: dict[int, tuple[int, str]] = {}
    running: list[tuple[int, str]] = []
    try:
        for number, (replica, priority, release, take) in enumerate(steps):
            if release and running:
                owner, ticket = running.pop(0)
                await gates[owner].release(pool, ticket)
            ticket = gates[replica].ticket(number)
            free = capacity - len(running)
            if take:
                ahead = sum(1 for p, _ in heads.values() if p <= priority)
                taken = await gates[replica].take(pool, ticket, priority, capacity, 0)
                assert taken == (free - ahead > 0)
                if taken:
                    running.append((replica, ticket))
                assert await gates[0].running(pool) == len(running) <= capacity
                continue
            heads[replica] = (priority, ticket)
            better = sum(1 for r, (p, _) in heads.items() if r != replica and p < priority)
            ties = sum(1 for r, (p, _) in heads.items() if r != replica and p == priority)
            granted = await gates[replica].admit(pool, ticket, priority, capacity, 0)
            assert granted is not None
            if granted:
                assert better < free, "a slot went past better heads that needed it"
                running.append((replica, ticket))
                del heads[replica]
            elif better == 0 and ties == 0:
                assert free <= 0, "the best head was refused a free slot"
            assert await gates[0].running(pool) == len(running) <= capacity
    finally:
        await redis.aclose()
