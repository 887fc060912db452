"""The billing service on SQLite and PostgreSQL: grants, team seats, Stripe's events in any order
and replayed, grace periods and period ends, and each person's plan following along."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, insert, select

from lamplighter.billing.subscriptions import add_period
from lamplighter.exceptions import Conflict, InvalidRequest
from lamplighter.store import migrate
from lamplighter.store.billing import Subscriptions
from lamplighter.store.models import SubscriptionRow, Team, TeamMember, User, utcnow
from tests.billing.conftest import Setup
from tests.billing.factories import (
    checkout_completed,
    invoice_event,
    signed,
    subscription_event,
)


def _email() -> str:
    return f"billing-{uuid.uuid4().hex[:10]}@example.org"


async def _user(setup: Setup, plan: str = "free") -> User:
    return await setup.accounts.create_user(_email(), plan=plan)


async def _plan_of(setup: Setup, user: User) -> str:
    async with setup.db.transaction() as session:
        found = await session.get(User, user.id)
        assert found is not None
        return found.plan


async def _row(setup: Setup, ref: str) -> SubscriptionRow:
    async with setup.db.transaction() as session:
        row = await Subscriptions(session).by_ref(ref)
        assert row is not None
        return row


async def test_a_grant_applies_to_the_next_request_and_ends_with_its_period(
    setup: Setup,
) -> None:
    user = await _user(setup)
    key = await setup.accounts.create_key(user.email)
    end = setup.clock.now + timedelta(days=30)
    await setup.billing.grant(plan="silver", until=end, email=user.email)
    assert (await setup.accounts.authenticate(key.secret)).plan == "silver"
    # A second grant replaces the first at once, down as well as up.
    await setup.billing.grant(plan="bronze", until=end, email=user.email)
    assert (await setup.accounts.authenticate(key.secret)).plan == "bronze"
    # The database is shared with other tests: sweeps may move their subscriptions too.
    await setup.billing.sweep(end - timedelta(seconds=1))
    assert (await setup.accounts.authenticate(key.secret)).plan == "bronze"
    await setup.billing.sweep(end)
    assert (await setup.accounts.authenticate(key.secret)).plan == "free"
    await setup.billing.sweep(end + timedelta(days=1))  # idempotent
    assert (await setup.accounts.authenticate(key.secret)).plan == "free"


async def test_team_seats_go_to_members_in_the_order_they_joined(setup: Setup) -> None:
    owner, second, third = [await _user(setup) for _ in range(3)]
    name = f"team-{uuid.uuid4().hex[:8]}"
    await setup.billing.create_team(name, owner.email)
    for user in (second, third):
        setup.clock.advance(seconds=1)
        await setup.billing.add_member(name, user.email)
    await setup.billing.grant(
        plan="gold", until=setup.clock.now + timedelta(days=30), team=name, seats=2
    )
    assert [await _plan_of(setup, u) for u in (owner, second, third)] == ["gold", "gold", "free"]
    late = await _user(setup)
    with pytest.raises(Conflict, match="no free seat"):
        await setup.billing.add_member(name, late.email)
    await setup.billing.remove_member(name, second.email)
    assert [await _plan_of(setup, u) for u in (owner, second, third)] == ["gold", "free", "gold"]
    team = await setup.billing.team(name)
    assert [m["seat"] for m in team["members"]] == [True, True]
    # A member with a plan of their own keeps the better one.
    await setup.billing.grant(
        plan="silver", until=setup.clock.now + timedelta(days=60), email=owner.email
    )
    assert await _plan_of(setup, owner) == "gold"
    await setup.billing.end(team=name)
    assert [await _plan_of(setup, u) for u in (owner, third)] == ["silver", "free"]


async def test_members_go_back_to_the_plan_they_were_given_when_the_team_plan_ends(
    setup: Setup,
) -> None:
    """A team's grant lends its members a plan; when it ends, or they leave the team, each goes
    back to the plan they had apart from it (set by hand, or by default), not all to free."""
    owner, handpicked, seatless = await _user(setup), await _user(setup, "plus"), await _user(setup)
    name = f"team-{uuid.uuid4().hex[:8]}"
    await setup.billing.create_team(name, owner.email)
    await setup.billing.add_member(name, handpicked.email)
    until = setup.clock.now + timedelta(days=30)
    await setup.billing.grant(plan="gold", until=until, team=name, seats=2)
    assert [await _plan_of(setup, u) for u in (owner, handpicked)] == ["gold", "gold"]
    await setup.billing.end(team=name)
    assert [await _plan_of(setup, u) for u in (owner, handpicked)] == ["free", "plus"]

    await setup.billing.grant(plan="gold", until=until, team=name, seats=2)
    await setup.billing.remove_member(name, handpicked.email)  # teams remove
    assert await _plan_of(setup, handpicked) == "plus"
    # A member the grant does not cover (no seat) keeps the plan they were given.
    await setup.billing.end(team=name)
    await setup.accounts.set_plan(seatless.email, "bronze")
    await setup.billing.add_member(name, seatless.email)
    await setup.billing.grant(plan="gold", until=until, team=name, seats=1)
    assert [await _plan_of(setup, u) for u in (owner, seatless)] == ["gold", "bronze"]
    await setup.billing.remove_member(name, seatless.email)
    assert await _plan_of(setup, seatless) == "bronze"
    # Given by hand while the grant covered them: the plan they go back to.
    await setup.billing.grant(plan="gold", until=until, team=name, seats=2)
    await setup.billing.add_member(name, handpicked.email)
    await setup.accounts.set_plan(owner.email, "silver")
    await setup.billing.sweep(until)
    assert [await _plan_of(setup, u) for u in (owner, handpicked)] == ["silver", "plus"]


def test_the_migration_keeps_plans_given_by_hand_but_not_those_billing_lent(
    tmp_path: Path,
) -> None:
    """Accounts from before base_plan: one no subscription covers keeps its plan as given; one
    covered now (its own subscription, or its team's) falls to the free plan when it ends, as
    before, since the plan it had before was overwritten."""
    path = tmp_path / "before.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}", "0018")
    engine = create_engine(f"sqlite:///{path}")
    now, team = utcnow(), uuid.uuid4()
    people = {"own": "gold", "member": "gold", "lapsed": "plus", "plain": "bronze"}
    ids = {name: uuid.uuid4() for name in people}

    def subscription(status: str, **subject: uuid.UUID) -> dict[str, Any]:
        return dict(
            id=uuid.uuid4(), provider="manual", status=status, plan="gold", period="month",
            seats=1, period_end=now, renews=False, created_at=now, updated_at=now, **subject,
        )  # fmt: skip

    with engine.begin() as conn:
        for name, plan in people.items():
            conn.execute(
                insert(User.__table__).values(
                    id=ids[name], email=f"{name}@example.org", plan=plan, created_at=now
                )
            )
        conn.execute(insert(Team.__table__).values(id=team, name="acme", created_at=now))
        conn.execute(
            insert(TeamMember.__table__).values(user_id=ids["member"], team_id=team, joined_at=now)
        )
        conn.execute(
            insert(SubscriptionRow.__table__).values(subscription("active", user_id=ids["own"]))
        )
        conn.execute(
            insert(SubscriptionRow.__table__).values(subscription("past_due", team_id=team))
        )
        conn.execute(
            insert(SubscriptionRow.__table__).values(subscription("ended", user_id=ids["lapsed"]))
        )
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    with engine.connect() as conn:
        found = dict(conn.execute(select(User.__table__.c.email, User.__table__.c.base_plan)).all())
    engine.dispose()
    assert found == {
        "own@example.org": None,
        "member@example.org": None,
        "lapsed@example.org": "plus",
        "plain@example.org": "bronze",
    }


async def test_stripe_events_apply_in_any_order_and_replays_change_nothing(
    setup: Setup,
) -> None:
    user = await _user(setup)
    subject, ref = f"user:{user.id}", f"sub_{uuid.uuid4().hex[:14]}"
    t0 = setup.clock.now
    end = add_period(t0, "month")

    def deliver(event: dict[str, object]) -> object:
        return setup.billing.stripe_event(*signed(event))

    # The update (to gold) overtakes the creation (silver): the older creation is ignored.
    updated = subscription_event(
        "updated",
        subject=subject,
        plan="gold",
        subscription=ref,
        created=t0 + timedelta(seconds=5),
        period_end=end,
    )
    created = subscription_event(
        "created", subject=subject, plan="silver", subscription=ref, created=t0, period_end=end
    )
    assert await deliver(updated) == "applied"
    assert await deliver(created) == "unchanged"
    assert await _plan_of(setup, user) == "gold"
    assert await deliver(updated) == "duplicate"
    # Checkout completing late changes nothing either.
    completed = checkout_completed(subject=subject, plan="silver", subscription=ref, created=t0)
    assert await deliver(completed) == "unchanged"
    # A downgrade waits for the period end.
    down = subscription_event(
        "updated",
        subject=subject,
        plan="bronze",
        subscription=ref,
        created=t0 + timedelta(seconds=9),
        period_end=end,
    )
    assert await deliver(down) == "applied"
    assert await _plan_of(setup, user) == "gold"
    assert (await _row(setup, ref)).pending_plan == "bronze"
    # The renewal's payment starts the new period on bronze.
    paid = invoice_event("paid", subscription=ref, created=end, period_end=add_period(end, "month"))
    setup.clock.now = end
    assert await deliver(paid) == "applied"
    assert await _plan_of(setup, user) == "bronze"
    # A failed payment keeps the plan for the grace period, then the sweep takes it.
    failed = invoice_event(
        "payment_failed", subscription=ref, created=end + timedelta(days=31), period_end=end
    )
    setup.clock.now = end + timedelta(days=31)
    assert await deliver(failed) == "applied"
    assert (await _row(setup, ref)).status == "past_due"
    assert await _plan_of(setup, user) == "bronze"
    await setup.billing.sweep(end + timedelta(days=38))
    assert (await _row(setup, ref)).status == "suspended"
    assert await _plan_of(setup, user) == "free"
    # Paying late brings it back; then the deletion ends it, and a late update cannot revive it.
    late_paid = invoice_event(
        "paid",
        subscription=ref,
        created=end + timedelta(days=39),
        period_end=add_period(end, "month", 2),
    )
    assert await deliver(late_paid) == "applied"
    assert await _plan_of(setup, user) == "bronze"
    deleted = subscription_event(
        "deleted",
        subject=subject,
        plan="bronze",
        subscription=ref,
        created=end + timedelta(days=40),
        period_end=end,
    )
    stale = subscription_event(
        "updated",
        subject=subject,
        plan="gold",
        subscription=ref,
        created=end + timedelta(days=41),
        period_end=end,
    )
    assert await deliver(deleted) == "applied"
    assert await deliver(stale) == "unchanged"
    assert (await _row(setup, ref)).status == "ended"
    assert await _plan_of(setup, user) == "free"


async def test_a_deletion_heard_before_the_creation_wins(setup: Setup) -> None:
    user = await _user(setup)
    subject, ref = f"user:{user.id}", f"sub_{uuid.uuid4().hex[:14]}"
    t0, end = setup.clock.now, add_period(setup.clock.now, "month")
    deleted = subscription_event(
        "deleted",
        subject=subject,
        plan="gold",
        subscription=ref,
        created=t0 + timedelta(seconds=3),
        period_end=end,
    )
    created = subscription_event(
        "created", subject=subject, plan="gold", subscription=ref, created=t0, period_end=end
    )
    assert await setup.billing.stripe_event(*signed(deleted)) == "applied"
    assert await setup.billing.stripe_event(*signed(created)) == "unchanged"
    assert await _plan_of(setup, user) == "free"


async def test_a_grant_never_overrides_a_paid_subscription_and_checkout_needs_stripe(
    setup: Setup,
) -> None:
    user = await _user(setup)
    subject, ref = f"user:{user.id}", f"sub_{uuid.uuid4().hex[:14]}"
    end = add_period(setup.clock.now, "month")
    created = subscription_event(
        "created",
        subject=subject,
        plan="silver",
        subscription=ref,
        created=setup.clock.now,
        period_end=end,
    )
    assert await setup.billing.stripe_event(*signed(created)) == "applied"
    with pytest.raises(Conflict, match="pays through stripe"):
        await setup.billing.grant(plan="gold", until=end, email=user.email)
    who = await setup.accounts.authenticate((await setup.accounts.create_key(user.email)).secret)
    with pytest.raises(InvalidRequest, match="not sold"):
        await setup.billing.checkout(
            who, plan="gold", period="year", success_url="http://x/", cancel_url="http://x/"
        )
    with pytest.raises(InvalidRequest) as refused:
        await setup.billing.checkout(
            who, plan="gold", period="month", success_url="http://x/", cancel_url="http://x/"
        )
    assert refused.value.code == "billing_not_configured"


STRIPE_KINDS = ("created", "updated", "updated", "deleted", "paid", "payment_failed", "checkout")


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, str, int, str, bool]], list[int]]:
    """Distinct events (kind, plan, seconds after the start, Stripe status, cancel flag), and
    an order of delivery in which some are sent again."""
    events = draw(
        st.lists(
            st.tuples(
                st.sampled_from(STRIPE_KINDS),
                st.sampled_from(("bronze", "silver", "gold")),
                st.integers(0, 40 * 86400),
                st.sampled_from(("active", "trialing", "past_due", "unpaid", "incomplete")),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
        )
    )
    order = list(range(len(events)))
    for _ in range(draw(st.integers(0, 6))):
        first = draw(st.integers(0, len(events) - 1))
        order.insert(draw(st.integers(order.index(first) + 1, len(order))), first)
    return events, order


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=deliveries())
async def test_replaying_any_stripe_event_at_any_moment_changes_nothing(
    sqlite_setup: Setup, plan: tuple[list[tuple[str, str, int, str, bool]], list[int]]
) -> None:
    setup = sqlite_setup
    events, order = plan
    t0 = setup.clock.now
    outcomes = []
    for replays in (False, True):
        user = await _user(setup)
        subject, ref = f"user:{user.id}", f"sub_{uuid.uuid4().hex[:14]}"
        made = []
        for number, (kind, plan_name, offset, status, cancel) in enumerate(events):
            at = t0 + timedelta(seconds=offset)
            event_id = f"evt_{ref}_{number}"
            if kind == "checkout":
                made.append(
                    checkout_completed(
                        subject=subject,
                        plan=plan_name,
                        subscription=ref,
                        created=at,
                        event_id=event_id,
                    )
                )
            elif kind in ("paid", "payment_failed"):
                made.append(
                    invoice_event(
                        kind,
                        subscription=ref,
                        created=at,
                        period_end=add_period(at, "month"),
                        event_id=event_id,
                    )
                )
            else:
                made.append(
                    subscription_event(
                        kind, subject=subject, plan=plan_name, subscription=ref, created=at,
                        period_end=add_period(at, "month"), status=status,
                        cancel_at_period_end=cancel, event_id=event_id,
                    )
                )  # fmt: skip
        for index in order if replays else range(len(events)):
            await setup.billing.stripe_event(*signed(made[index]))
        async with setup.db.transaction() as session:
            row = await Subscriptions(session).by_ref(ref)
            state = (
                None if row is None else (row.status, row.plan, row.pending_plan, row.period_end)
            )
        plan_now = await _plan_of(setup, user)
        if state is not None and state[0] in ("ended", "suspended", "incomplete"):
            assert plan_now == "free"
        outcomes.append((state, plan_now))
    assert outcomes[0] == outcomes[1]
