"""GCRA, the generic cell rate algorithm: an exact token bucket kept as one timestamp.

A limit of ``rate`` units per ``period`` seconds with room for ``burst`` units at once. Each unit
costs ``period / rate`` seconds of "theoretical arrival time" (TAT); a request of ``cost`` units is
allowed when, after paying for it, the TAT is no further ahead of now than the burst allows. Unlike
fixed windows it never lets through twice the limit across a window edge, and unlike a sliding log
it needs no list of past requests: one float per key, which is what makes an atomic Redis version
a few lines of Lua.

Pure functions of ``(state, now)``: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """``rate`` units per ``period`` seconds, at most ``burst`` at once (default: ``rate``)."""

    rate: float
    period: float = 60.0
    burst: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.period <= 0:
            raise ValueError("rate and period must be positive")
        if self.burst is not None and self.burst < 1:
            raise ValueError("burst must be at least 1")

    @property
    def interval(self) -> float:
        """Seconds of TAT one unit costs."""
        return self.period / self.rate

    @property
    def capacity(self) -> float:
        return self.rate if self.burst is None else self.burst


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    tat: float  # the key's new TAT (unchanged when refused)
    remaining: int  # whole units still available right now (after this request, if allowed)
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until this request would be allowed (0 when allowed)


def check(rate: Rate, tat: float | None, now: float, cost: float) -> Verdict:
    """Would ``cost`` units be allowed at ``now``? Returns the verdict and the TAT to store."""
    start = now if tat is None else max(tat, now)
    new_tat = start + cost * rate.interval
    horizon = now + rate.capacity * rate.interval
    if new_tat <= horizon + 1e-9:
        return Verdict(
            allowed=True,
            tat=new_tat,
            remaining=_remaining(rate, new_tat, now),
            reset_after=new_tat - now,
            retry_after=0.0,
        )
    retry = math.inf if cost > rate.capacity else new_tat - horizon
    return Verdict(
        allowed=False,
        tat=start,
        remaining=_remaining(rate, start, now),
        reset_after=start - now,
        retry_after=retry,
    )


def refund(rate: Rate, tat: float, now: float, units: float) -> float:
    """The TAT after giving back ``units`` that were reserved but not used."""
    return max(tat - units * rate.interval, now)


def peek(rate: Rate, tat: float | None, now: float) -> tuple[int, float]:
    """(remaining units, seconds until full) without spending anything."""
    start = now if tat is None else max(tat, now)
    return _remaining(rate, start, now), start - now


def rescale(tat: float, now: float, old_interval: float, new_interval: float) -> float:
    """The TAT that keeps the same *units* used when a limit changes (a raised quota frees what
    was raised, a lowered one takes effect at once), rather than the same share of the bucket."""
    if tat <= now or old_interval == new_interval:
        return tat
    return now + (tat - now) / old_interval * new_interval


def convert(tat: float, now: float, old_interval: float, rate: Rate) -> float:
    """A TAT kept at ``old_interval``, now under ``rate`` (its limit changed): the same units
    used (``rescale``), but never more than a full bucket of the new limit. A limit lowered
    below what someone already used makes them wait for the new bucket to empty, at most one
    period, not pay the old overdraft off at the new, slower rate (549 tokens used, a new
    daily limit of 100: 110 hours). The state stores the result with the new interval, so
    the units run down at the new rate from then on and a refusal's wait is exact."""
    if tat <= now or old_interval == rate.interval:
        return tat
    return min(rescale(tat, now, old_interval, rate.interval), now + rate.capacity * rate.interval)


def _remaining(rate: Rate, tat: float, now: float) -> int:
    return max(0, math.floor(rate.capacity - (tat - now) / rate.interval + 1e-9))
