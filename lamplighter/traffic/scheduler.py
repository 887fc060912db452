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
measured service times, is refused at once instead of waiting to be refused.

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
class Scheduler:
    slots: int
    # Smoothing of the measured time a request holds a slot (exponentially weighted mean).
    smoothing: float = 0.2
    running: dict[int, Ticket] = field(default_factory=dict)
    waiting: dict[int, Ticket] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    mean_service: float | None = None
    _started: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError("a pool needs at least one slot")

    @property
    def free(self) -> int:
        return self.slots - len(self.running)

    def submit(self, ticket: Ticket, now: float) -> Refusal | None:
        """Queue a ticket, or refuse it at once when it cannot start before its deadline."""
        if ticket.user not in self._backlogged_users():
            self.counters[ticket.user] = max(
                self.counters.get(ticket.user, 0.0), self._floor(ticket.priority)
            )
        wait = self.expected_wait(ticket)
        if wait is not None and now + wait > ticket.deadline:
            return Refusal(ticket, retry_after=wait)
        self.waiting[ticket.id] = ticket
        return None

    def expected_wait(self, ticket: Ticket) -> float | None:
        """Seconds until ``ticket`` would start: 0 if a slot is free for it, else the waves of
        completions it must wait for, taking running requests as half done on average. None
        while no service time has been measured yet."""
        needed = self._ahead_of(ticket) + 1 - self.free
        if needed <= 0:
            return 0.0
        if self.mean_service is None:
            return None
        return (math.ceil(needed / self.slots) - 0.5) * self.mean_service

    def schedule(self, now: float) -> tuple[list[Ticket], list[Refusal]]:
        """Start what fits in the free slots; refuse what waited past its deadline."""
        expired = [t for t in self.waiting.values() if t.deadline < now]
        for ticket in expired:
            del self.waiting[ticket.id]
        started: list[Ticket] = []
        while self.free > 0 and self.waiting:
            ticket = min(self.waiting.values(), key=self._order)
            del self.waiting[ticket.id]
            self.running[ticket.id] = ticket
            self._started[ticket.id] = now
            self.counters[ticket.user] = self.counters.get(ticket.user, 0.0) + ticket.cost
            started.append(ticket)
        refused = [Refusal(t, retry_after=self.mean_service or 1.0) for t in expired]
        return started, refused

    def finish(self, ticket_id: int, used: float, now: float) -> None:
        """A running request ended having used ``used`` tokens: free its slot, correct the
        user's counter from reserved to real usage, and learn the service time."""
        ticket = self.running.pop(ticket_id, None)
        if ticket is None:
            return
        self.counters[ticket.user] = self.counters.get(ticket.user, 0.0) - ticket.cost + used
        held = now - self._started.pop(ticket_id, now)
        if self.mean_service is None:
            self.mean_service = held
        else:
            self.mean_service += self.smoothing * (held - self.mean_service)

    def cancel(self, ticket_id: int) -> bool:
        """Drop a waiting ticket (its requester went away). True if it was waiting."""
        return self.waiting.pop(ticket_id, None) is not None

    def _order(self, ticket: Ticket) -> tuple[int, float, int, float, int]:
        # Between equal counters (a newcomer is lifted to the smallest), the user with fewer
        # requests already running goes first, then the earlier arrival.
        in_flight = sum(1 for t in self.running.values() if t.user == ticket.user)
        counter = self.counters.get(ticket.user, 0.0)
        return (ticket.priority, counter, in_flight, ticket.arrived, ticket.id)

    def _ahead_of(self, ticket: Ticket) -> int:
        return sum(1 for other in self.waiting.values() if other.priority <= ticket.priority)

    def _backlogged_users(self) -> set[str]:
        return {t.user for t in self.waiting.values()} | {t.user for t in self.running.values()}

    def _floor(self, priority: int) -> float:
        """The smallest counter among users backlogged in this priority class (0 if none)."""
        counters = [
            self.counters.get(t.user, 0.0)
            for t in (*self.waiting.values(), *self.running.values())
            if t.priority == priority
        ]
        return min(counters, default=0.0)
