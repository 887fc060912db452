"""Admission control in the server: the pure :class:`Scheduler` driven by asyncio.

Each backend is one pool with as many slots as it declares it can run at once. ``enter`` returns
a :class:`Slot` at once when the backend has room; otherwise the request waits in the pool's
priority-and-fairness queue for at most its plan's patience, and is refused with 503 and
``retry-after`` the moment it is clear it cannot start in time. A waiter whose task is cancelled
(its client went away) leaves the queue immediately.

With several replicas (a :class:`SlotGate` in Redis) the backend's slots are shared: the local
queue still orders this replica's requests, and a worker task puts its head forward in Redis and
starts it when the gate grants a slot (see ``gate.py``). Replicas route on what they see, so
several of them can send requests to the same backend at the same instant and find it full while
another is idle: ``try_enter`` takes a shared slot only if one is free for it now, so that the
caller can look for room elsewhere before it queues (``ChatService`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamplighter.exceptions import ConfigError, Overloaded, ShuttingDown
from lamplighter.traffic.clock import Clock
from lamplighter.traffic.gate import POLL_S, SlotGate
from lamplighter.traffic.plans import Plan
from lamplighter.traffic.scheduler import Refusal, Scheduler, Ticket

log = logging.getLogger(__name__)
_ids = itertools.count()
# How often a waiting request asks whether its backend still takes requests (``enter``).
WATCH_S = 1.0


class BackendLost(Exception):
    """The backend a request waited for stopped taking requests (its health check failed, its
    breaker opened): the request may go to another."""


@dataclass
class Slot:
    pool: Pool
    ticket: Ticket
    released: bool = False

    def release(self, used_tokens: int) -> None:
        """Give the slot back (idempotent); ``used_tokens`` corrects the fairness counter."""
        if not self.released:
            self.released = True
            self.pool.finish(self.ticket.id, used_tokens)


@dataclass
class Pool:
    name: str
    scheduler: Scheduler
    clock: Clock
    waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    # Shared slots (several replicas): the gate, and how many replicas share the backend (for
    # the fallback while Redis is away).
    gate: SlotGate | None = None
    replicas: int = 1
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task[None] | None = None
    _chores: set[asyncio.Task[None]] = field(default_factory=set)
    _forward: bool = False  # this replica has a head waiting in Redis
    _closed: bool = False
    _renewed: float = 0.0

    @property
    def queued(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def in_use(self) -> int:
        return len(self.scheduler.running)

    @property
    def utilization(self) -> float:
        return self.in_use / self.scheduler.slots

    async def enter(
        self, user: str, plan: Plan, cost: int, accepting: Callable[[], bool] = lambda: True
    ) -> Slot:
        """A slot, at once or after waiting at most the plan's patience (Overloaded if none
        comes in time). While it waits, it asks every ``WATCH_S`` whether the backend is still
        ``accepting`` requests: if not (it hung, or broke), it leaves the queue and raises
        BackendLost, so that the request goes elsewhere rather than waiting out its patience
        in front of a backend that will not serve it."""
        loop = asyncio.get_running_loop()
        now = self.clock.monotonic()
        ticket = Ticket(next(_ids), user, plan.priority, cost, now, now + plan.queue_patience_s)
        refusal = self.scheduler.submit(ticket, now)
        if refusal is not None:
            raise self._overloaded(plan, refusal.retry_after)
        future: asyncio.Future[None] = loop.create_future()
        self.waiters[ticket.id] = future
        self._dispatch()
        try:
            deadline = loop.time() + plan.queue_patience_s
            while not future.done() and (left := deadline - loop.time()) > 0:
                await asyncio.wait({future}, timeout=min(left, WATCH_S))
                if not future.done() and not accepting() and self.scheduler.cancel(ticket.id):
                    raise BackendLost(f"Backend '{self.name}' stopped taking requests.")
            if not future.done():
                self.scheduler.cancel(ticket.id)
                wait = self.scheduler.expected_wait(ticket, self.clock.monotonic())
                raise self._overloaded(plan, self.scheduler.retry_after(wait))
            future.result()
        except asyncio.CancelledError:
            # The requester left: out of the queue, or out of the slot it was just given.
            if not self.scheduler.cancel(ticket.id):
                self.finish(ticket.id, 0)
            raise
        finally:
            self.waiters.pop(ticket.id, None)
        return Slot(self, ticket)

    async def try_enter(self, user: str, plan: Plan, cost: int) -> Slot | None:
        """With shared slots, a slot now if one is free without overtaking anyone waiting for
        this backend on any replica; else None at once, queuing nothing. None as well without a
        gate, and while Redis is away: then only ``enter`` decides."""
        gate = self.gate
        if gate is None or not gate.answering or self._closed or self.scheduler.waiting:
            return None
        now = self.clock.monotonic()
        ticket = Ticket(next(_ids), user, plan.priority, cost, now, now + plan.queue_patience_s)
        shared = gate.ticket(ticket.id)
        reserve = self.scheduler.reserve(plan.priority)
        try:
            taken = await gate.take(self.name, shared, plan.priority, self.scheduler.slots, reserve)
        except asyncio.CancelledError:
            self._chore(self._free(shared))  # whether or not Redis gave it the slot
            raise
        if not taken:
            return None
        if self.scheduler.submit(ticket, now) is not None:  # resized meanwhile: not here, then
            self._chore(self._free(shared))
            return None
        self.scheduler.start(ticket.id, now)
        self.wake()  # the worker renews its lease while it runs
        return Slot(self, ticket)

    def finish(self, ticket_id: int, used: int) -> None:
        held = ticket_id in self.scheduler.running
        self.scheduler.finish(ticket_id, used, self.clock.monotonic())
        if self.gate is not None and held:
            self._chore(self._free(self.gate.ticket(ticket_id)))
        self._dispatch()

    def _dispatch(self) -> None:
        if self.gate is not None:
            self.wake()
            return
        started, refused = self.scheduler.schedule(self.clock.monotonic())
        for ticket in started:
            self._started(ticket)
        self._refused(refused)

    def _started(self, ticket: Ticket) -> None:
        waiter = self.waiters.get(ticket.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _refused(self, refused: list[Refusal]) -> None:
        for refusal in refused:
            waiter = self.waiters.get(refusal.ticket.id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    Overloaded(
                        "The request waited longer than its plan allows.",
                        retry_after=refusal.retry_after,
                    )
                )

    def refuse_waiting(self, why: str) -> int:
        """Refuse every request still waiting for a slot (the server is stopping): 503 with
        ``retry-after``, so that its client asks another replica."""
        refused = 0
        for ticket_id, waiter in list(self.waiters.items()):
            if not waiter.done() and self.scheduler.cancel(ticket_id):
                waiter.set_exception(ShuttingDown(why, retry_after=1))
                refused += 1
        return refused

    def resize(self, capacity: int, reserved: dict[int, int]) -> None:
        """A reloaded configuration changed the backend's capacity or the headroom."""
        self.scheduler.slots = capacity
        self.scheduler.reserved = reserved
        self._dispatch()

    # -- slots shared through the gate ----------------------------------------------------

    def wake(self) -> None:
        """Ask the gate again now: something here changed, or a slot freed elsewhere."""
        if self.gate is None or self._closed:
            return
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"pool-{self.name}")

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._grant()
            except Exception:
                log.exception("admission through the shared gate failed; retrying")
            if not self.scheduler.waiting and not self.scheduler.running:
                await self._wake.wait()
            else:
                # Not wait_for: on 3.11 it can swallow a cancel that races the event.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await self._wake.wait()

    async def _grant(self) -> None:
        """Start local heads for as long as the gate grants them slots."""
        gate = self.gate
        assert gate is not None
        now = self.clock.monotonic()
        self._refused(self.scheduler.expire(now))
        running = list(self.scheduler.running)
        if running and now - self._renewed >= gate.lease_ttl / 3:
            await gate.renew(self.name, [gate.ticket(i) for i in running])
            self._renewed = now
            # A ticket that finished while the renewal was on its way may have been added back
            # after its release: release it again, now that the renewal is done.
            for ticket_id in running:
                if ticket_id not in self.scheduler.running:
                    await gate.release(self.name, gate.ticket(ticket_id))
        while (ticket := self.scheduler.next()) is not None:
            reserve = self.scheduler.reserve(ticket.priority)
            shared = gate.ticket(ticket.id)
            granted = await gate.admit(
                self.name, shared, ticket.priority, self.scheduler.slots, reserve
            )
            if granted is None:  # Redis is away: this replica's share of the backend
                share = max(1, math.ceil(self.scheduler.slots / self.replicas))
                granted = share - len(self.scheduler.running) > min(reserve, share - 1)
            self._forward = not granted
            if not granted:
                return
            if ticket.id not in self.scheduler.waiting:  # its requester left meanwhile
                await self._free(shared)
                continue
            self.scheduler.start(ticket.id, self.clock.monotonic())
            self._started(ticket)
        if self._forward:
            await gate.withdraw(self.name)
            self._forward = False

    async def _free(self, shared: str) -> None:
        assert self.gate is not None
        await self.gate.release(self.name, shared)

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)

    def _overloaded(self, plan: Plan, retry_after: float) -> Overloaded:
        return Overloaded(
            f"The service is at capacity and this request could not start within the "
            f"{plan.queue_patience_s:g}s that plan '{plan.name}' waits; "
            f"requests queued for '{self.name}': {self.queued}. Try again shortly.",
            retry_after=retry_after,
        )


class Admission:
    """One pool per backend, created on first use with the backend's declared capacity.

    ``headroom`` maps a priority to the share of every pool that requests of that priority or
    lower (a larger number) may not take: ``{2: 0.33}`` keeps a third of each backend for plans of
    priority 0 and 1, so a surge of free traffic never leaves a paying request without a slot.
    """

    def __init__(
        self,
        clock: Clock,
        headroom: Mapping[int, float] | None = None,
        *,
        gate: SlotGate | None = None,
        replicas: int = 1,
    ) -> None:
        """With ``gate``, backend slots are shared with the other replicas (see ``gate.py``)."""
        self.clock = clock
        self.headroom = dict(headroom or {})
        self.gate = gate
        self.replicas = replicas
        self.pools: dict[str, Pool] = {}

    def wake(self, name: str) -> None:
        """A slot of backend ``name`` freed on another replica."""
        pool = self.pools.get(name)
        if pool is not None:
            pool.wake()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    def ends_in(self, user: str) -> float | None:
        """Seconds until the first of ``user``'s requests running here is expected to end
        (None: none runs here, or there is nothing to go on)."""
        now = self.clock.monotonic()
        ends = [e for p in self.pools.values() if (e := p.scheduler.ends_in(user, now)) is not None]
        return min(ends, default=None)

    def refuse_waiting(self, why: str) -> int:
        """Refuse every request waiting for a slot, in every pool (the server is stopping)."""
        return sum(pool.refuse_waiting(why) for pool in self.pools.values())

    def resize(self, name: str, capacity: int) -> None:
        """Backend ``name`` now runs ``capacity`` requests at once (a reloaded configuration)."""
        pool = self.pools.get(name)
        if pool is not None and pool.scheduler.slots != capacity:
            pool.resize(capacity, self._reserved(capacity))

    def set_headroom(self, headroom: Mapping[int, float]) -> None:
        """New shares kept for better plans (a reloaded configuration), in every pool."""
        self.headroom = dict(headroom)
        for pool in self.pools.values():
            pool.resize(pool.scheduler.slots, self._reserved(pool.scheduler.slots))

    def _reserved(self, capacity: int) -> dict[int, int]:
        return {
            priority: min(capacity - 1, math.floor(share * capacity))
            for priority, share in self.headroom.items()
        }

    def pool(self, name: str, capacity: int) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            reserved = self._reserved(capacity)
            scheduler = Scheduler(slots=capacity, reserved=reserved)
            pool = self.pools[name] = Pool(
                name, scheduler, self.clock, gate=self.gate, replicas=self.replicas
            )
        return pool


def headroom_from_config(table: object) -> dict[int, float]:
    """``[traffic] headroom = { "2" = 0.33 }``: priorities (as TOML keys) to shares. A key is
    a plan's priority, not its name, which is the mistake this names."""
    if not isinstance(table, Mapping):
        raise ConfigError(
            f'[traffic] headroom must be a table of priorities to shares, {{ "2" = 0.33 }}, '
            f"not {table!r}"
        )
    headroom = {}
    for priority, share in table.items():
        if not (priority.isascii() and priority.isdigit()):
            raise ConfigError(
                f"[traffic] headroom: the key {priority!r} is no priority: keys are plans' "
                "priorities, whole numbers of 0 or more (2 for the free plan's), not plan "
                "names"
            )
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
            raise ConfigError(
                f"[traffic] headroom: the share for priority {priority} must be a number at "
                f"least 0 and below 1, not {share!r}"
            )
        headroom[int(priority)] = float(share)
    return headroom
