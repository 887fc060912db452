"""A plan's rate limits applied to one user: reserve before generating, settle afterwards.

Three GCRA buckets per user: requests per minute, tokens per minute and tokens per day (a
rolling day that refills continuously, so nobody waits for midnight), plus a cap on concurrent
streams. A request reserves one request and ``prompt + max_tokens`` tokens in all of them at once
(all or nothing); when it ends, however it ends, the tokens it did not use are given back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from lamplighter.exceptions import InvalidRequest, QuotaExceeded, RateLimited
from lamplighter.traffic.clock import Clock
from lamplighter.traffic.limiters import Rate, Verdict
from lamplighter.traffic.plans import Plan
from lamplighter.traffic.state import Limit, TrafficState

DAY = 86_400.0


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


@dataclass
class Reservation:
    user: str
    tokens: Limit
    daily: Limit
    reserved: int
    lease: str  # the concurrent-stream slot it holds until settled
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class RateLimiter:
    def __init__(self, state: TrafficState, clock: Clock) -> None:
        self.state = state
        self.clock = clock

    @staticmethod
    def limits(plan: Plan, user: str, tokens: int, bonus: int = 0) -> tuple[Limit, Limit, Limit]:
        """The user's three buckets; ``bonus`` extra daily tokens are what their feedback
        earned (see flywheel/credits.py). A changed bonus rescales the daily bucket."""
        daily = Rate(plan.tokens_per_day + bonus, DAY)
        return (
            Limit(f"{user}:requests", "requests", Rate(plan.requests_per_minute), 1),
            Limit(f"{user}:tokens", "tokens", Rate(plan.tokens_per_minute), tokens),
            Limit(f"{user}:daily", "daily_tokens", daily, tokens),
        )

    async def reserve(
        self, plan: Plan, user_id: uuid.UUID, tokens: int, bonus: int = 0
    ) -> Reservation:
        """Spend one request and ``tokens`` tokens, or raise 429 saying which limit and when."""
        user = str(user_id)
        limits = self.limits(plan, user, tokens, bonus)
        reserved = await self.state.reserve(
            limits, self.clock.monotonic(), (user, plan.concurrent_streams)
        )
        # What this replica enforces now: the plan's limits, or its share of them while the
        # shared state is away (then the headers and refusals name the share).
        enforced, most = self.state.in_force(limits, plan.concurrent_streams)
        # The requests and tokens buckets as they stand now: spent if granted, untouched if not.
        headers = _headers(enforced, reserved.standing[0], reserved.standing[1])
        if reserved.no_stream_slot:
            breach = RateLimited(
                f"Too many concurrent requests on plan '{plan.name}': the limit is "
                f"{most} at a time. Wait for one to finish.",
                # Refined by the caller when an answer of theirs runs on this replica.
                retry_after=max(1.0, reserved.slot_lapses_in or 1.0),
                headers=headers,
            )
            # Told apart from the per-minute limit by its type (the code is OpenAI's for both):
            # waiting a second does not help, an answer ending does.
            breach.type = "concurrent_requests"
            breach.violation = "concurrency"
            raise breach
        if not reserved.granted:
            limit, verdict = max(
                (
                    (limit, verdict)
                    for limit, verdict in zip(enforced, reserved.verdicts, strict=True)
                    if not verdict.allowed
                ),
                key=lambda pair: pair[1].retry_after,
            )
            raise _refusal(plan, limit, verdict, headers)
        assert reserved.lease is not None
        _, per_minute, daily = limits
        return Reservation(
            user=user,
            tokens=per_minute,
            daily=daily,
            reserved=tokens,
            lease=reserved.lease,
            headers=headers,
        )

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Give back what the request reserved but did not use, and its stream slot."""
        if reservation.settled:
            return
        reservation.settled = True
        unused = max(0, reservation.reserved - used)
        await self.state.settle(
            [(reservation.tokens, unused), (reservation.daily, unused)],
            self.clock.monotonic(),
            (reservation.user, reservation.lease),
        )

    async def remaining(
        self, plan: Plan, user_id: uuid.UUID, bonus: int = 0
    ) -> dict[str, tuple[int, int]]:
        """(limit, remaining) of each rate, as things stand, spending nothing: what the web
        page shows a person about their plan."""
        limits = self.limits(plan, str(user_id), 0, bonus)
        standing = await self.state.peek(limits, self.clock.monotonic())
        return {
            limit.name: (int(limit.rate.capacity), remaining)
            for limit, (remaining, _) in zip(limits, standing, strict=True)
        }

    async def headers(self, plan: Plan, user_id: uuid.UUID) -> dict[str, str]:
        """The rate-limit headers for a user as things stand, spending nothing."""
        requests, per_minute, _ = self.limits(plan, str(user_id), 0)
        standing = await self.state.peek((requests, per_minute), self.clock.monotonic())
        enforced, _ = self.state.in_force((requests, per_minute), plan.concurrent_streams)
        return _headers(enforced, *standing)


def _headers(
    limits: Sequence[Limit], requests: tuple[int, float], tokens: tuple[int, float]
) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers from the requests and tokens limits in force and (remaining,
    seconds until full) of each bucket."""
    return {
        "x-ratelimit-limit-requests": str(int(limits[0].rate.capacity)),
        "x-ratelimit-remaining-requests": str(requests[0]),
        "x-ratelimit-reset-requests": duration(requests[1]),
        "x-ratelimit-limit-tokens": str(int(limits[1].rate.capacity)),
        "x-ratelimit-remaining-tokens": str(tokens[0]),
        "x-ratelimit-reset-tokens": duration(tokens[1]),
    }


def _refusal(
    plan: Plan, limit: Limit, verdict: Verdict, headers: dict[str, str]
) -> RateLimited | QuotaExceeded | InvalidRequest:
    capacity = int(limit.rate.capacity)
    used = capacity - verdict.remaining
    if verdict.retry_after == float("inf"):
        what = "tokens per day" if limit.name == "daily_tokens" else f"{limit.name} per minute"
        # Retrying cannot help, so this is a 400 (which clients do not retry), not a 429.
        return InvalidRequest(
            f"Request too large for plan '{plan.name}': it needs {int(limit.cost)} tokens "
            f"(prompt plus max_tokens) but the limit is {capacity} {what}. Lower max_tokens "
            "or shorten the messages.",
            param="max_tokens",
            code="request_too_large",
            headers=headers,
        )
    wait = duration(verdict.retry_after)
    if limit.name == "daily_tokens":
        return QuotaExceeded(
            f"You exceeded the daily token quota of plan '{plan.name}': limit {capacity} tokens "
            f"per day, used {used}, requested {int(limit.cost)}. The quota refills continuously; "
            f"try again in {wait}.",
            retry_after=verdict.retry_after,
            headers=headers,
        )
    error = RateLimited(
        f"Rate limit reached for {limit.name} per minute on plan '{plan.name}': limit "
        f"{capacity}, used {used}, requested {int(limit.cost)}. Please try again in {wait}.",
        retry_after=verdict.retry_after,
        headers=headers,
    )
    error.type = limit.name
    return error
