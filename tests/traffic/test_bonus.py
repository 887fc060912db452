"""Credits earned by feedback raise a person's daily token limit, and only theirs."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.exceptions import InvalidRequest, QuotaExceeded
from lamplighter.traffic.clock import ManualClock
from lamplighter.traffic.plans import Plan
from lamplighter.traffic.ratelimits import RateLimiter
from lamplighter.traffic.state import MemoryState

PLAN = Plan("free", requests_per_minute=1000, tokens_per_minute=10**6, tokens_per_day=1000)


async def test_a_bonus_lets_a_day_hold_more_tokens() -> None:
    limiter = RateLimiter(MemoryState(), ManualClock())
    person, other = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(InvalidRequest):  # larger than the plan's whole day
        await limiter.reserve(PLAN, person, 1500)
    held = await limiter.reserve(PLAN, person, 1500, bonus=500)
    await limiter.settle(held, 1500)
    with pytest.raises(QuotaExceeded):
        await limiter.reserve(PLAN, person, 100, bonus=500)
    left = await limiter.remaining(PLAN, other, bonus=0)
    assert left["daily_tokens"] == (1000, 1000)


@settings(max_examples=50, derandomize=True, deadline=None)
@given(bonus=st.integers(0, 5000), spend=st.integers(1, 6000))
async def test_a_day_never_holds_more_than_plan_plus_bonus(bonus: int, spend: int) -> None:
    limiter = RateLimiter(MemoryState(), ManualClock())
    person = uuid.uuid4()
    spent = 0
    for _ in range(8):
        try:
            held = await limiter.reserve(PLAN, person, spend, bonus=bonus)
        except (InvalidRequest, QuotaExceeded):
            break
        await limiter.settle(held, spend)
        spent += spend
    assert spent <= PLAN.tokens_per_day + bonus
    assert spent + spend > PLAN.tokens_per_day + bonus or spent == 8 * spend
