"""Where limiter state lives, behind one interface designed for atomic check-and-reserve.

``reserve`` checks every limit of a request and, only if all allow it, spends them all: no
request is ever half-counted, and two requests racing for the last unit cannot both get it. The
in-process implementation gets that atomicity from the event loop (no ``await`` inside); the Redis
one (``redis_state.py``) runs the same GCRA arithmetic in one Lua script with the server's clock.

``now`` is the caller's clock. ``MemoryState`` keeps time by it; ``RedisState`` reads the Redis
server's clock instead (replicas' clocks disagree) and uses ``now`` only for its local fallback
while Redis is unreachable. A TAT in a verdict is therefore in the state's own timebase: compare
``reset_after`` and ``retry_after``, never ``tat``, with the caller's clock.

Concurrent streams are leases: ``reserve`` takes a slot along with the limits and hands out a
token that ``settle`` gives back, so releasing twice, or a release after the lease expired, can
never free someone else's slot. One call decides a request, refused or not, and tells what is
left, so that with Redis a request costs one round trip to admit (and a refusal no more), not one
per limit, slot and header.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lamplighter.traffic.limiters import Rate, Verdict, check, convert, peek, refund


@dataclass(frozen=True)
class Reserved:
    """What ``reserve`` decided. The limits were spent, and ``lease`` holds a stream slot when
    one was asked for, if and only if ``granted``."""

    verdicts: list[Verdict]  # each limit's check (``allowed`` even if another refused)
    standing: list[tuple[int, float]]  # each limit's (remaining, seconds until full) afterwards
    lease: str | None = None
    no_stream_slot: bool = False  # every concurrent-stream slot was taken: nothing was checked
    # Then, where slots are leases (Redis): seconds until the soonest of them lapses unless its
    # replica renews it. A dead replica's slot comes back then; a live one's answer may end
    # sooner, but its replica cannot say when.
    slot_lapses_in: float | None = None

    @property
    def granted(self) -> bool:
        return not self.no_stream_slot and all(verdict.allowed for verdict in self.verdicts)


@dataclass(frozen=True)
class Limit:
    key: str  # whose bucket: "<user id>:<name>"
    name: str  # which limit, for messages and headers: "requests", "tokens", "daily_tokens"
    rate: Rate
    cost: float


class TrafficState(Protocol):
    async def reserve(
        self, limits: Sequence[Limit], now: float, stream: tuple[str, int] | None = None
    ) -> Reserved:
        """Check every limit and, with ``stream`` (key, most), take one of ``most``
        concurrent-stream slots for ``key``: all are spent if and only if all allow it."""

    async def settle(
        self,
        refunds: Sequence[tuple[Limit, float]],
        now: float,
        stream: tuple[str, str] | None = None,
    ) -> None:
        """Give back the units of a reservation that were not used, (limit, units) each, and
        the concurrent-stream slot ``stream`` (key, lease) holds, if given: all at once."""

    async def peek(self, limits: Sequence[Limit], now: float) -> list[tuple[int, float]]:
        """(remaining, seconds until full) for each limit, spending nothing."""

    def in_force(self, limits: Sequence[Limit], most: int) -> tuple[list[Limit], int]:
        """The limits and concurrent-stream cap (of ``most``) this replica enforces now: what
        headers and refusals name (a share of them while shared state is away)."""


class MemoryState:
    """Limiter state in this process: exact for one replica."""

    def __init__(self) -> None:
        # key -> (TAT, the interval it was computed with), so a changed limit can be rescaled.
        self._tat: dict[str, tuple[float, float]] = {}
        self._streams: dict[str, set[str]] = {}  # key -> the leases holding its slots

    def _get(self, limit: Limit, now: float) -> float | None:
        entry = self._tat.get(limit.key)
        if entry is None:
            return None
        tat, interval = entry
        if interval != limit.rate.interval:  # the limit changed: converted once, kept so
            tat = convert(tat, now, interval, limit.rate)
            self._tat[limit.key] = (tat, limit.rate.interval)
        return tat

    async def reserve(
        self, limits: Sequence[Limit], now: float, stream: tuple[str, int] | None = None
    ) -> Reserved:
        self._forget_idle(now)
        if stream is not None and len(self._streams.get(stream[0], ())) >= stream[1]:
            return Reserved([], await self.peek(limits, now), no_stream_slot=True)
        verdicts = [check(limit.rate, self._get(limit, now), now, limit.cost) for limit in limits]
        if not all(verdict.allowed for verdict in verdicts):
            return Reserved(verdicts, await self.peek(limits, now))
        for limit, verdict in zip(limits, verdicts, strict=True):
            self._tat[limit.key] = (verdict.tat, limit.rate.interval)
        lease = None
        if stream is not None:
            lease = uuid.uuid4().hex
            self._streams.setdefault(stream[0], set()).add(lease)
        return Reserved(verdicts, [(v.remaining, v.reset_after) for v in verdicts], lease)

    async def settle(
        self,
        refunds: Sequence[tuple[Limit, float]],
        now: float,
        stream: tuple[str, str] | None = None,
    ) -> None:
        for limit, units in refunds:
            tat = self._get(limit, now)
            if tat is not None and units > 0:
                self._tat[limit.key] = (refund(limit.rate, tat, now, units), limit.rate.interval)
        if stream is not None:
            key, lease = stream
            leases = self._streams.get(key)
            if leases is not None:
                leases.discard(lease)
                if not leases:
                    del self._streams[key]

    def in_force(self, limits: Sequence[Limit], most: int) -> tuple[list[Limit], int]:
        return list(limits), most

    async def peek(self, limits: Sequence[Limit], now: float) -> list[tuple[int, float]]:
        return [peek(limit.rate, self._get(limit, now), now) for limit in limits]

    def _forget_idle(self, now: float) -> None:
        """A TAT in the past means a full bucket, the same as no entry: drop them now and then
        so memory follows active users, not every user ever seen."""
        if len(self._tat) > 10_000:
            self._tat = {key: entry for key, entry in self._tat.items() if entry[0] > now}
