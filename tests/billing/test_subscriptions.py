"""The subscription state machine, driven by hypothesis: whatever events arrive, in whatever
order and however often, the subscription stays valid, nobody keeps a paid plan once it ended
or its grace ran out, upgrades apply at once and downgrades at the period end, and an event
applied twice is applied once."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.billing.subscriptions import (
    LIVE,
    Cancel,
    ChangePlan,
    Event,
    Granted,
    Paid,
    PaymentFailed,
    Policy,
    Resume,
    Snapshot,
    Started,
    Subscription,
    Terminated,
    Tick,
    add_period,
    entitlement,
    problems,
    step,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PLANS = ("free", "basic", "plus", "pro")
POLICY = Policy(
    grace=timedelta(days=7), ranks={name: (rank * 1000, 0) for rank, name in enumerate(PLANS)}
)
STRIPE_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "paused",
)

days = st.integers(min_value=-40, max_value=400).map(lambda d: T0 + timedelta(days=d))
plans = st.sampled_from(PLANS[1:])
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        Started,
        at=days,
        plan=plans,
        period=st.sampled_from(["month", "year"]),
        seats=st.integers(1, 5),
        period_end=days,
        renews=st.booleans(),
        status=st.sampled_from(["active", "trialing", "incomplete"]),
    ),
    st.builds(
        Snapshot,
        at=days,
        status=st.sampled_from(STRIPE_STATUSES),
        plan=plans | st.just(""),
        seats=st.integers(0, 5),
        period_end=days,
        cancel_at_period_end=st.booleans(),
    ),
    st.builds(ChangePlan, at=days, plan=plans),
    st.builds(Cancel, at=days),
    st.builds(Resume, at=days),
    st.builds(Paid, at=days, period_end=days),
    st.builds(PaymentFailed, at=days),
    st.builds(Granted, at=days, plan=plans, seats=st.integers(1, 5), period_end=days),
    st.builds(Terminated, at=days),
    st.builds(Tick, at=days),
)
histories = st.lists(events, max_size=25)
live = st.builds(
    Subscription,
    status=st.sampled_from(["active", "trialing"]),
    plan=st.sampled_from(PLANS[1:3]),
    period=st.just("month"),
    seats=st.integers(1, 3),
    period_end=st.just(T0 + timedelta(days=30)),
    renews=st.booleans(),
)


def run(history: list[Event]) -> list[Subscription | None]:
    states: list[Subscription | None] = [None]
    for event in history:
        states.append(step(states[-1], event, POLICY))
    return states


@settings(max_examples=400, deadline=None)
@given(histories)
def test_any_sequence_of_events_leaves_a_valid_subscription(history: list[Event]) -> None:
    states = run(history)
    for before, after in itertools.pairwise(states):
        assert problems(after) == []
        if before is not None:
            assert after is not None, "a subscription never disappears"
            if before.status == "ended":
                assert after == before, "ended is final"
            if before.provider_at is not None:
                assert after.provider_at is not None and after.provider_at >= before.provider_at
            if before.payment_at is not None:
                assert after.payment_at is not None and after.payment_at >= before.payment_at


@settings(max_examples=400, deadline=None)
@given(histories, events)
def test_an_event_applied_twice_is_applied_once(history: list[Event], event: Event) -> None:
    state = run(history)[-1]
    once = step(state, event, POLICY)
    assert step(once, event, POLICY) == once


@settings(max_examples=400, deadline=None)
@given(histories, days)
def test_nobody_keeps_a_paid_plan_once_it_ended_or_its_grace_ran_out(
    history: list[Event], now: datetime
) -> None:
    state = run(history)[-1]
    if state is None:
        return
    plan = entitlement(state, now, POLICY)
    if state.status in ("ended", "suspended", "incomplete"):
        assert plan is None
    if state.status == "past_due" and state.grace_until is not None and now >= state.grace_until:
        assert plan is None
    if state.status == "canceling" and now >= state.period_end:
        assert plan is None
    if not state.renews and now >= state.period_end:
        assert plan is None
    # What the sweep will store agrees with what entitlement promised beforehand.
    swept = step(state, Tick(now), POLICY)
    assert entitlement(swept, now, POLICY) == plan
    if swept is not None and swept.status in ("ended", "suspended"):
        assert entitlement(swept, now + timedelta(days=3650), POLICY) is None


@settings(max_examples=300, deadline=None)
@given(live, st.sampled_from(PLANS[1:]), st.integers(0, 29))
def test_an_upgrade_applies_at_once_and_a_downgrade_at_the_period_end(
    sub: Subscription, plan: str, day: int
) -> None:
    at = T0 + timedelta(days=day)
    changed = step(sub, ChangePlan(at, plan), POLICY)
    assert changed is not None
    upgrade = POLICY.rank(plan) >= POLICY.rank(sub.plan)
    if upgrade:
        assert entitlement(changed, at, POLICY) == plan
        assert changed.pending_plan is None
    else:
        assert entitlement(changed, at, POLICY) == sub.plan
        assert entitlement(changed, sub.period_end - timedelta(seconds=1), POLICY) == sub.plan
        if sub.renews:
            # At the period end (swept, or the renewal's payment heard) the new plan starts.
            assert entitlement(changed, sub.period_end, POLICY) == plan
            ticked = step(changed, Tick(sub.period_end), POLICY)
            assert ticked is not None and ticked.plan == plan and ticked.pending_plan is None
            renewed = step(changed, Paid(at, add_period(sub.period_end, "month")), POLICY)
            assert renewed is not None and renewed.plan == plan
        else:
            assert entitlement(changed, sub.period_end, POLICY) is None


def test_a_failed_payment_keeps_the_plan_for_the_grace_period_then_takes_it() -> None:
    sub = step(None, Started(T0, "plus", "month", 1, T0 + timedelta(days=30)), POLICY)
    failed = step(sub, PaymentFailed(T0 + timedelta(days=30)), POLICY)
    assert failed is not None and failed.status == "past_due"
    assert entitlement(failed, T0 + timedelta(days=36), POLICY) == "plus"
    assert entitlement(failed, T0 + timedelta(days=37), POLICY) is None
    swept = step(failed, Tick(T0 + timedelta(days=37)), POLICY)
    assert swept is not None and swept.status == "suspended"
    # Paying later brings it back; a late copy of the failure does not undo the payment.
    paid = step(swept, Paid(T0 + timedelta(days=40), T0 + timedelta(days=60)), POLICY)
    assert paid is not None and paid.status == "active"
    assert step(paid, PaymentFailed(T0 + timedelta(days=30)), POLICY) == paid


def test_out_of_order_snapshots_and_a_late_update_after_a_deletion() -> None:
    end = T0 + timedelta(days=30)
    newer = Snapshot(T0 + timedelta(seconds=5), "active", "pro", 1, end)
    older = Snapshot(T0, "active", "plus", 1, end)
    sub = step(step(None, newer, POLICY), older, POLICY)
    assert sub is not None and sub.plan == "pro"
    gone = step(sub, Terminated(T0 + timedelta(seconds=1)), POLICY)
    late = step(gone, Snapshot(T0 + timedelta(seconds=9), "active", "pro", 1, end), POLICY)
    assert late is not None and late.status == "ended"
    assert entitlement(late, T0 + timedelta(seconds=10), POLICY) is None


def test_a_late_incomplete_never_takes_a_paid_subscription_back() -> None:
    end = T0 + timedelta(days=30)
    sub = step(None, Started(T0, "plus", "month", 1, end), POLICY)
    late = step(sub, Snapshot(T0, "incomplete", "plus", 1, end), POLICY)
    assert late is not None and late.status == "active"


def test_periods_add_calendar_months() -> None:
    assert add_period(datetime(2026, 1, 31, tzinfo=UTC), "month") == datetime(
        2026, 2, 28, tzinfo=UTC
    )
    assert add_period(datetime(2026, 11, 15, tzinfo=UTC), "month", 3) == datetime(
        2027, 2, 15, tzinfo=UTC
    )
    assert add_period(datetime(2028, 2, 29, tzinfo=UTC), "year") == datetime(
        2029, 2, 28, tzinfo=UTC
    )
    assert all(s in LIVE for s in ("trialing", "active", "past_due", "canceling"))
