"""Where limiter state lives, behind one interface designed for atomic check-and-reserve.

``reserve`` checks every limit of a request and, only if all allow it, spends them all: no
request is ever half-counted, and two requests racing for the last unit cannot both get it. The
in-process implementation gets that atomicity from the event loop (no ``await`` inside); the Redis
one (``redis_state.py``) runs the same GCRA arithmetic in one Lua script with the server's clock.

``now`` is the caller's clock. ``MemoryState`` keeps time by it; ``RedisState`` reads the Redis
server's clock instead (replicas' clocks disagree) and uses ``now`` only for its local fallback
while Redis is unreachable. A TAT in a verdict is therefore in the state's own timebase: compare
``reset_after`` and ``retry_after``, never ``tat``, with the caller's clock.

Concurrent streams are leases: ``acquire_stream`` hands out a token that ``release_stream`` gives
back, so releasing twice, or a release after the lease expired, can never free someone else's
slot.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lamplighter.traffic.limiters import Rate, Verdict, check, peek, refund, rescale


@dataclass(frozen=True)
class Limit:
    key: str  # whose bucket: "<user id>:<name>"
    name: str  # which limit, for messages and headers: "requests", "tokens", "daily_tokens"
    rate: Rate
    cost: float


class TrafficState(Protocol):
    async def reserve(self, limits: Sequence[Limit], now: float) -> list[Verdict]:
        """Verdicts for every limit; all were spent if and only if all allowed."""

    async def settle(
        self,
        refunds: Sequence[tuple[Limit, float]],
        now: float,
        stream: tuple[str, str] | None = None,
    ) -> None:
        """Give back the units of a reservation that were not used, (limit, units) each, and
        the concurrent-stream slot ``stream`` (key, lease) holds, if given: all at once."""

    async def peek(self, limit: Limit, now: float) -> tuple[int, float]:
        """(remaining, seconds until full) for a limit, spending nothing."""

    async def acquire_stream(self, key: str, most: int) -> str | None:
        """Take one of ``most`` concurrent-stream slots for ``key``: a lease token, or None if
        no slot is free."""

    async def release_stream(self, key: str, lease: str) -> None:
        """Give back the slot ``lease`` holds; a lease already given back is ignored."""


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
        return rescale(entry[0], now, entry[1], limit.rate.interval)

    async def reserve(self, limits: Sequence[Limit], now: float) -> list[Verdict]:
        verdicts = [check(limit.rate, self._get(limit, now), now, limit.cost) for limit in limits]
        if all(verdict.allowed for verdict in verdicts):
            for limit, verdict in zip(limits, verdicts, strict=True):
                self._tat[limit.key] = (verdict.tat, limit.rate.interval)
        self._forget_idle(now)
        return verdicts

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
            await self.release_stream(*stream)

    async def peek(self, limit: Limit, now: float) -> tuple[int, float]:
        return peek(limit.rate, self._get(limit, now), now)

    async def acquire_stream(self, key: str, most: int) -> str | None:
        if len(self._streams.get(key, ())) >= most:
            return None
        lease = uuid.uuid4().hex
        self._streams.setdefault(key, set()).add(lease)
        return lease

    async def release_stream(self, key: str, lease: str) -> None:
        leases = self._streams.get(key)
        if leases is None:
            return
        leases.discard(lease)
        if not leases:
            del self._streams[key]

    def _forget_idle(self, now: float) -> None:
        """A TAT in the past means a full bucket, the same as no entry: drop them now and then
        so memory follows active users, not every user ever seen."""
        if len(self._tat) > 10_000:
            self._tat = {key: entry for key, entry in self._tat.items() if entry[0] > now}
