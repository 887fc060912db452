"""GCRA maths: no sequence of requests ever gets more than the limit allows."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamplighter.traffic.limiters import Rate, check, peek, refund, rescale
from lamplighter.traffic.state import Limit, MemoryState

rates = st.builds(
    Rate,
    rate=st.integers(min_value=1, max_value=200).map(float),
    period=st.sampled_from([1.0, 60.0, 86400.0]),
    burst=st.one_of(st.none(), st.integers(min_value=1, max_value=300).map(float)),
)
arrivals = st.lists(
    st.tuples(st.floats(min_value=0, max_value=30, allow_nan=False), st.integers(1, 50)),
    min_size=1,
    max_size=60,
)


@given(rates, arrivals)
def test_admitted_units_never_exceed_burst_plus_rate_over_any_window(
    rate: Rate, gaps: list[tuple[float, int]]
) -> None:
    now, tat, admitted = 0.0, None, []
    for gap, cost in gaps:
        now += gap * rate.interval
        verdict = check(rate, tat, now, cost)
        if verdict.allowed:
            tat = verdict.tat
            admitted.append((now, cost))
    # Over every window [a, b], the admitted units fit the burst plus what refills in b - a.
    for i, (start, _) in enumerate(admitted):
        total = 0
        for when, cost in admitted[i:]:
            total += cost
            assert total <= rate.capacity + (when - start) / rate.interval + 1e-6


@given(rates, arrivals)
def test_a_refused_request_is_allowed_exactly_after_retry_after(
    rate: Rate, gaps: list[tuple[float, int]]
) -> None:
    now, tat = 0.0, None
    for gap, cost in gaps:
        now += gap * rate.interval
        verdict = check(rate, tat, now, cost)
        if verdict.allowed:
            tat = verdict.tat
            continue
        assert verdict.tat == (tat if tat is not None and tat > now else now)
        if math.isinf(verdict.retry_after):
            assert cost > rate.capacity
            continue
        assert verdict.retry_after > 0
        assert check(rate, tat, now + verdict.retry_after, cost).allowed
        assert not check(rate, tat, now + verdict.retry_after * 0.99 - 1e-6, cost).allowed


@given(rates, st.integers(1, 50), st.integers(0, 50))
def test_refunds_restore_capacity_but_never_beyond_full(rate: Rate, cost: int, unused: int) -> None:
    verdict = check(rate, None, 0.0, cost)
    if not verdict.allowed:
        return
    unused = min(unused, cost)
    tat = refund(rate, verdict.tat, 0.0, unused)
    remaining, _ = peek(rate, tat, 0.0)
    assert remaining == math.floor(rate.capacity - (cost - unused) + 1e-9)
    assert peek(rate, refund(rate, tat, 0.0, 10**9), 0.0)[0] == math.floor(rate.capacity)


def test_headers_figures_for_a_simple_limit() -> None:
    rate = Rate(60, 60.0)  # one a second, sixty at once
    verdict = check(rate, None, 100.0, 1)
    assert verdict.allowed and verdict.remaining == 59
    assert verdict.reset_after == pytest.approx(1.0)


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Rate(0)
    with pytest.raises(ValueError):
        Rate(10, burst=0)


@given(
    st.integers(1, 1000),
    st.integers(1, 1000),
    st.integers(1, 1000),
)
def test_a_changed_limit_keeps_the_units_used_not_the_share(
    old_limit: int, new_limit: int, used: int
) -> None:
    old, new = Rate(old_limit, 86400.0), Rate(new_limit, 86400.0)
    used = min(used, old_limit)
    verdict = check(old, None, 0.0, used)
    assert verdict.allowed
    tat = rescale(verdict.tat, 0.0, old.interval, new.interval)
    remaining, _ = peek(new, tat, 0.0)
    assert remaining == max(0, new_limit - used)


@given(
    st.integers(1, 1000),
    st.integers(1, 1000),
    st.integers(1, 1000),
    st.integers(1, 1000),
)
def test_a_limit_lowered_below_what_was_used_makes_one_wait_at_most_a_period(
    old_limit: int, new_limit: int, used: int, cost: int
) -> None:
    """An operator lowers a daily quota under what someone already spent today: the refusal
    says to wait at most a day, and the request fits once that wait is over (549 tokens
    against a new 100 a day said 110 hours)."""
    used, cost = min(used, old_limit), min(cost, new_limit)
    state = MemoryState()
    before = Limit("u:daily", "daily_tokens", Rate(old_limit, 86400.0), used)
    assert asyncio.run(state.reserve([before], 0.0)).granted
    after = Limit("u:daily", "daily_tokens", Rate(new_limit, 86400.0), cost)
    refused = asyncio.run(state.reserve([after], 0.0))
    if refused.granted:
        assert used + cost <= new_limit
        return
    [verdict] = refused.verdicts
    assert 0 < verdict.retry_after <= 86400.0 + 1e-6
    assert asyncio.run(state.reserve([after], verdict.retry_after + 1e-6)).granted
