"""Admission for one pool of capacity: who starts next when a backend has a free slot.

The order is strict priority between plan classes (a waiting ``team`` request always starts
before a waiting ``free`` one), and inside a class, fair sharing by virtual token counters as in
VTC ("Fairness in Serving Large Language Models", OSDI 2024): each user's counter grows by the
tokens they are served, and the backlogged user with the smallest counter goes next, so a heavy
user cannot crowd out light users of the same plan. Counters are charged at admission with the
tokens reserved (so a burst of one user's requests cannot all slip in before any of them has
finished) and corrected to real usage when the request ends. A user who was idle re-enters at the
smallest counter of those waiting, so idleness banks no credit.

Each request waits at most its patience. One that cannot start in time, by the pool's own
measured service times, is refused at once instead of waiting to be refused. The pool's requests
start and end at staggered times (continuous batching), so slots free up one at a time, at
``slots / mean_service`` per second on average. Requests of better classes still to come take
freed slots first: a class sees slots free at that rate less the rate at which better classes
have been arriving lately (decayed over ``horizon_s``), so the k-th slot for it is expected
after about ``(k - 0.5) / (slots / mean_service - better arrivals)`` seconds, and never while
better classes arrive as fast as slots free. Such a request is refused at once, told to come
back after ``horizon_s`` (by then the rate it was refused on has mostly been forgotten).

Pure logic: time is an argument, there is no I/O and no asyncio; ``admission.py`` drives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ticket:
    id: int
    user: str
    priority: int  # lower starts first
    cost: float  # tokens reserved: prompt + granted max_tokens
    arrived: float
    deadline: float  # latest start time the requester will accept


@dataclass(frozen=True)
class Refusal:
    ticket: Ticket
    retry_after: float


@dataclass
class Rate:
    """Events per second, decayed exponentially with time constant ``horizon`` seconds: a
    steady stream of r a second reads r, and a burst fades away within a few horizons."""

    horizon: float
    value: float = 0.0
    at: float = 0.0

    def hit(self, now: float) -> None:
        self.value = self.per_second(now) + 1.0 / self.horizon
        self.at = now

    def per_second(self, now: float) -> float:
        return self.value * math.exp(-max(0.0, now - self.at) / self.horizon)


@dataclass
class Scheduler:
    slots: int
    # Smoothing of the measured time a request holds a slot (exponentially weighted mean).
    smoothing: float = 0.2
    # Trunk reservation: slots that worse classes may not take. A ticket of priority p starts
    # only while more than ``reserved[q]`` slots are free, for the largest reservation of any
    # priority q <= p named here (so a worse class never reserves less than a better one).
    # Empty (the default): every class may take every slot.
    reserved: dict[int, int] = field(default_factory=dict)
    running: dict[int, Ticket] = field(default_factory=dict)
    waiting: dict[int, Ticket] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    mean_service: float | None = None
    # The time constant of the measured arrival rates, and the retry-after of a request that
    # better classes leave no slot to.
    horizon_s: float = 10.0
    _arrivals: dict[int, Rate] = field(default_factory=dict)  # by priority: queued or started
    _started: dict[int, float] = field(default_factory=dict)
    # Per user: requests running, and requests waiting or running (kept so that choosing the
    # next ticket costs O(waiting), not O(waiting x running)).
    _in_flight: dict[str, int] = field(default_factory=dict)
    _backlog: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError("a pool needs at least one slot")
        if any(not 0 <= kept < self.slots for kept in self.reserved.values()):
            raise ValueError("a class may reserve from 0 to slots - 1 slots")

    @property
    def free(self) -> int:
        return self.slots - len(self.running)

    def submit(self, ticket: Ticket, now: float) -> Refusal | None:
        """Queue a ticket, or refuse it at once when it cannot start before its deadline."""
        if not self._backlog.get(ticket.user):
            self.counters[ticket.user] = max(
                self.counters.get(ticket.user, 0.0), self._floor(ticket.priority)
            )
        wait = self.expected_wait(ticket, now)
        if wait is not None and now + wait > ticket.deadline:
            return Refusal(ticket, retry_after=self.retry_after(wait))
        self.waiting[ticket.id] = ticket
        self._count(self._backlog, ticket.user, 1)
        self._arrivals.setdefault(ticket.priority, Rate(self.horizon_s)).hit(now)
        return None

    def expected_wait(self, ticket: Ticket, now: float) -> float | None:
        """Seconds until ``ticket`` would start: 0 if a slot is free for it, else the time until
        as many slots as it needs have freed for its class, with slots freeing one at a time at
        the pool's measured rate (``slots / mean_service``) less the rate better classes arrive
        at, and the first half an interval away; ``math.inf`` when better classes arrive at
        least as fast as slots free. For one slot and no better class that is the running
        request's remaining half plus one service per request ahead. None while no service
        time has been measured yet and nothing runs (``service_time``)."""
        needed = self._ahead_of(ticket) + 1 - (self.free - self.reserve(ticket.priority))
        if needed <= 0:
            return 0.0
        service = self.service_time(now)
        if service is None:
            return None
        if service <= 0:
            return 0.0  # requests so far took no time at all (a fake clock's, say)
        better = sum(
            rate.per_second(now) for p, rate in self._arrivals.items() if p < ticket.priority
        )
        left = self.slots / service - better
        return (needed - 0.5) / left if left > 0 else math.inf

    def service_time(self, now: float) -> float | None:
        """How long a request holds a slot: the measured mean, or before any request has
        finished, a guess from those running, twice the time they have run on average (caught
        at a random moment, a request is half way through). None with nothing to go on."""
        if self.mean_service is not None:
            return self.mean_service
        if not self.running:
            return None
        ran = [now - self._started.get(ticket, now) for ticket in self.running]
        return 2 * sum(ran) / len(ran)

    def ends_in(self, user: str, now: float) -> float | None:
        """Seconds until the first of ``user``'s running requests is expected to end (at
        least 0): the service time less the time it has run. None with none running here, or
        nothing to go on."""
        service = self.service_time(now)
        ran = [now - self._started.get(t.id, now) for t in self.running.values() if t.user == user]
        if not ran or service is None:
            return None
        return max(0.0, service - max(ran))

    def retry_after(self, wait: float | None) -> float:
        """The retry-after of a refusal on an expected wait: that wait (at least one service
        time), or ``horizon_s`` when no slot is in sight (better classes take every one)."""
        if wait is None or math.isinf(wait):
            return self.horizon_s
        return max(wait, self.mean_service or 1.0)

    def schedule(self, now: float) -> tuple[list[Ticket], list[Refusal]]:
        """Start what fits in the free slots; refuse what waited past its deadline."""
        refused = self.expire(now)
        started: list[Ticket] = []
        while (ticket := self.next()) is not None:
            if self.free <= self.reserve(ticket.priority):
                break  # the best waiting ticket cannot start, so no worse one can
            started.append(self.start(ticket.id, now))
        return started, refused

    def expire(self, now: float) -> list[Refusal]:
        """Drop the tickets that waited past their deadline; each is told to come back when
        a request of its class arriving now would expect to start."""
        expired = [t for t in self.waiting.values() if t.deadline < now]
        for ticket in expired:
            del self.waiting[ticket.id]
            self._count(self._backlog, ticket.user, -1)
        return [Refusal(t, self.retry_after(self.expected_wait(t, now))) for t in expired]

    def next(self) -> Ticket | None:
        """The waiting ticket that starts next, whenever a slot is free for it."""
        return min(self.waiting.values(), key=self._order, default=None)

    def start(self, ticket_id: int, now: float) -> Ticket:
        """Move a waiting ticket to running (``schedule`` decides when; with slots shared across
        replicas, ``admission`` does) and charge its user's counter."""
        ticket = self.waiting.pop(ticket_id)
        self.running[ticket.id] = ticket
        self._started[ticket.id] = now
        self._count(self._in_flight, ticket.user, 1)
        self.counters[ticket.user] = self.counters.get(ticket.user, 0.0) + ticket.cost
        return ticket

    def finish(self, ticket_id: int, used: float, now: float) -> None:
        """A running request ended having used ``used`` tokens: free its slot, correct the
        user's counter from reserved to real usage, and learn the service time."""
        ticket = self.running.pop(ticket_id, None)
        if ticket is None:
            return
        self._count(self._in_flight, ticket.user, -1)
        self._count(self._backlog, ticket.user, -1)
        self.counters[ticket.user] = self.counters.get(ticket.user, 0.0) - ticket.cost + used
        held = now - self._started.pop(ticket_id, now)
        if self.mean_service is None:
            self.mean_service = held
        else:
            self.mean_service += self.smoothing * (held - self.mean_service)

    def cancel(self, ticket_id: int) -> bool:
        """Drop a waiting ticket (its requester went away). True if it was waiting."""
        ticket = self.waiting.pop(ticket_id, None)
        if ticket is None:
            return False
        self._count(self._backlog, ticket.user, -1)
        return True

    def reserve(self, priority: int) -> int:
        """Slots a ticket of this priority must leave free for better classes."""
        return max((kept for q, kept in self.reserved.items() if q <= priority), default=0)

    def _order(self, ticket: Ticket) -> tuple[int, float, int, float, int]:
        # Between equal counters (a newcomer is lifted to the smallest), the user with fewer
        # requests already running goes first, then the earlier arrival.
        in_flight = self._in_flight.get(ticket.user, 0)
        counter = self.counters.get(ticket.user, 0.0)
        return (ticket.priority, counter, in_flight, ticket.arrived, ticket.id)

    def _ahead_of(self, ticket: Ticket) -> int:
        return sum(1 for other in self.waiting.values() if other.priority <= ticket.priority)

    @staticmethod
    def _count(counts: dict[str, int], user: str, delta: int) -> None:
        left = counts.get(user, 0) + delta
        if left > 0:
            counts[user] = left
        else:
            counts.pop(user, None)

    def _floor(self, priority: int) -> float:
        """The smallest counter among users backlogged in this priority class (0 if none)."""
        counters = [
            self.counters.get(t.user, 0.0)
            for t in (*self.waiting.values(), *self.running.values())
            if t.priority == priority
        ]
        return min(counters, default=0.0)
