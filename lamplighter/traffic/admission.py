"""Admission control in the server: the pure :class:`Scheduler` driven by asyncio.

Each backend is one pool with as many slots as it declares it can run at once. ``enter`` returns
a :class:`Slot` at once when the backend has room; otherwise the request waits in the pool's
priority-and-fairness queue for at most its plan's patience, and is refused with 503 and
``retry-after`` the moment it is clear it cannot start in time. A waiter whose task is cancelled
(its client went away) leaves the queue immediately.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lamplighter.exceptions import ConfigError, Overloaded
from lamplighter.traffic.clock import Clock
from lamplighter.traffic.plans import Plan
from lamplighter.traffic.scheduler import Scheduler, Ticket

_ids = itertools.count()


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

    @property
    def queued(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def in_use(self) -> int:
        return len(self.scheduler.running)

    @property
    def utilization(self) -> float:
        return self.in_use / self.scheduler.slots

    async def enter(self, user: str, plan: Plan, cost: int) -> Slot:
        now = self.clock.monotonic()
        ticket = Ticket(next(_ids), user, plan.priority, cost, now, now + plan.queue_patience_s)
        refusal = self.scheduler.submit(ticket, now)
        if refusal is not None:
            raise self._overloaded(plan, refusal.retry_after)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[ticket.id] = future
        self._dispatch()
        try:
            if not future.done():
                await asyncio.wait({future}, timeout=plan.queue_patience_s)
            if not future.done():
                self.scheduler.cancel(ticket.id)
                wait = self.scheduler.expected_wait(ticket)
                raise self._overloaded(plan, wait if wait else plan.queue_patience_s)
            future.result()
        except asyncio.CancelledError:
            # The requester left: out of the queue, or out of the slot it was just given.
            if not self.scheduler.cancel(ticket.id):
                self.finish(ticket.id, 0)
            raise
        finally:
            self.waiters.pop(ticket.id, None)
        return Slot(self, ticket)

    def finish(self, ticket_id: int, used: int) -> None:
        self.scheduler.finish(ticket_id, used, self.clock.monotonic())
        self._dispatch()

    def _dispatch(self) -> None:
        started, refused = self.scheduler.schedule(self.clock.monotonic())
        for ticket in started:
            waiter = self.waiters.get(ticket.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for refusal in refused:
            waiter = self.waiters.get(refusal.ticket.id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    Overloaded(
                        "The request waited longer than its plan allows.",
                        retry_after=refusal.retry_after,
                    )
                )

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

    def __init__(self, clock: Clock, headroom: Mapping[int, float] | None = None) -> None:
        self.clock = clock
        self.headroom = dict(headroom or {})
        self.pools: dict[str, Pool] = {}

    def pool(self, name: str, capacity: int) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            reserved = {
                priority: min(capacity - 1, math.floor(share * capacity))
                for priority, share in self.headroom.items()
            }
            scheduler = Scheduler(slots=capacity, reserved=reserved)
            pool = self.pools[name] = Pool(name, scheduler, self.clock)
        return pool


def headroom_from_config(table: Mapping[str, Any]) -> dict[int, float]:
    """``[traffic] headroom = { "2" = 0.33 }``: priorities (as TOML keys) to shares."""
    try:
        headroom = {int(priority): float(share) for priority, share in table.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[traffic] headroom: {exc}") from exc
    if any(not 0 <= share < 1 for share in headroom.values()):
        raise ConfigError("[traffic] headroom: shares must be at least 0 and below 1")
    return headroom
