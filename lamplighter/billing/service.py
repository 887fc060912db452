"""The billing service: applies subscription events, persists them, and gives people their plans.

Every change goes the same way: load the subscription (locked, on PostgreSQL), run the pure
state machine (``subscriptions.step``), store the result, and in the same transaction set
``users.plan`` of everyone it covers (the subscriber, or a team's members within its seats) to
the best plan their live subscriptions give, or else the plan they were given by hand before
(``users.base_plan``; the free plan when none is known). A request reads its user's plan
from the database every time (``AccountService.authenticate``, the web session), so the change
binds the very next request on every replica, mid-conversation, with nothing to announce. Plan
definitions (limits and prices) are cached per replica and announced on the bulletin by
``PlanBook.put``, as before.

Provider events are stored by id in the same transaction as their effect, so a replay is
dropped; the state machine makes late and out-of-order events harmless. ``sweep`` applies period
ends and grace expiries (the server runs it every minute on each replica; it is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.billing import stripe
from lamplighter.billing.providers import ManualProvider, Provider
from lamplighter.billing.subscriptions import (
    LIVE,
    Cancel,
    ChangePlan,
    ChangeSeats,
    Event,
    Granted,
    Period,
    Policy,
    Resume,
    Snapshot,
    Started,
    Subscription,
    Terminated,
    Tick,
    entitlement,
    step,
)
from lamplighter.chat import Principal
from lamplighter.exceptions import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from lamplighter.store.accounts import Accounts
from lamplighter.store.audit import Audit
from lamplighter.store.audit import write as write_audit
from lamplighter.store.billing import BillingEvents, Subscriptions, Teams
from lamplighter.store.database import Database
from lamplighter.store.models import BillingEvent, SubscriptionRow, Team, TeamMember, User, utcnow
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import Plan

log = logging.getLogger(__name__)
# The fields of the state machine's Subscription, stored as columns of the same names.
STATE_FIELDS = tuple(f.name for f in fields(Subscription))
# How many times a webhook event is tried when two replicas race to create one subscription.
RACE_RETRIES = 3
# Checkouts for the same thing within this long share an Idempotency-Key, so Stripe answers a
# double click (or two tabs) with the same Checkout session instead of a second one.
CHECKOUT_BUCKET_S = 600


@dataclass(frozen=True)
class Subject:
    """Who subscribes: a user or a team."""

    kind: Literal["user", "team"]
    id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> Subject | None:
        kind, _, raw = (text or "").partition(":")
        try:
            found = uuid.UUID(raw)
        except ValueError:
            return None
        if kind == "user":
            return cls("user", found)
        if kind == "team":
            return cls("team", found)
        return None

    @classmethod
    def of(cls, row: SubscriptionRow) -> Subject:
        if row.user_id is not None:
            return cls("user", row.user_id)
        assert row.team_id is not None
        return cls("team", row.team_id)

    def owns(self, row: SubscriptionRow) -> None:
        if self.kind == "user":
            row.user_id = self.id
        else:
            row.team_id = self.id


@dataclass(frozen=True)
class Actor:
    """Who made a billing change, as the audit log names them: a person (a subscriber, an
    admin, ``cli:...`` for the command), ``stripe`` (its webhook) or ``system`` (the sweep)."""

    id: uuid.UUID | None
    name: str

    @classmethod
    def of(cls, audit: Audit | None) -> Actor:
        """The actor of an admin's or the command's change (``system`` when none is named)."""
        return cls(audit.actor_id, audit.actor_email) if audit is not None else SYSTEM

    @classmethod
    def person(cls, who: Principal) -> Actor:
        return cls(who.user_id, who.email)

    def audit(self, action: str, target: str, details: dict[str, Any]) -> Audit:
        return Audit(self.id, self.name, action, target, details)


STRIPE = Actor(None, "stripe")
SYSTEM = Actor(None, "system")


def state_of(row: SubscriptionRow) -> Subscription:
    values: dict[str, Any] = {name: getattr(row, name) for name in STATE_FIELDS}
    return Subscription(**values)


def subscription_json(row: SubscriptionRow) -> dict[str, Any]:
    def moment(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(row.id),
        "provider": row.provider,
        "status": row.status,
        "plan": row.plan,
        "pending_plan": row.pending_plan,
        "period": row.period,
        "seats": row.seats,
        "period_end": moment(row.period_end),
        "renews": row.renews,
        "grace_until": moment(row.grace_until),
        "ended_at": moment(row.ended_at),
    }


def no_team(name: str) -> NotFound:
    """The answer for a team name that is no team, or not one the caller may act for."""
    return NotFound(f"no team named {name!r}", param="team", code="team_not_found")


class Billing:
    def __init__(
        self,
        db: Database,
        plans: PlanBook,
        *,
        free_plan: str = "free",
        grace: timedelta = timedelta(days=7),
        stripe_client: stripe.StripeClient | None = None,
        webhook_secret: str = "",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.plans = plans
        self.free_plan = free_plan
        self.grace = grace
        self.webhook_secret = webhook_secret
        self.clock = clock
        self.providers: dict[str, Provider] = {"manual": ManualProvider()}
        if stripe_client is not None:
            self.providers["stripe"] = stripe_client

    @property
    def online(self) -> bool:
        """Whether people can pay online (Stripe is configured)."""
        return "stripe" in self.providers

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()

    def policy(self) -> Policy:
        """Plans rank by their monthly price, then by priority: moving up a rank applies now."""
        ranks = {plan.name: (plan.monthly_cost, -plan.priority) for plan in self.plans.all()}
        return Policy(grace=self.grace, ranks=ranks)

    # --- Applying events ------------------------------------------------------------------------

    async def _apply(
        self,
        session: AsyncSession,
        row: SubscriptionRow | None,
        event: Event,
        *,
        actor: Actor,
        new: Callable[[], SubscriptionRow] | None = None,
        settle: bool = True,
    ) -> tuple[SubscriptionRow | None, bool]:
        """Run ``event`` through the state machine, store the result and settle the plans of
        the people it covers (on behalf of ``actor``; not with ``settle=False``, for a change
        that another event in the same transaction completes). Returns the row (made with
        ``new`` when there was none) and whether anything changed."""
        policy = self.policy()
        # A sweep's clock may run ahead (tests, a late sweep); settle plans at its time.
        now = event.at if isinstance(event, Tick) else self.clock()
        before = state_of(row) if row is not None else None
        after = step(before, event, policy)
        if after is None or after == before:
            return row, False
        if row is None:
            if new is None:
                return None, False
            row = new()
            row.created_at = self.clock()
            session.add(row)
        for name in STATE_FIELDS:
            setattr(row, name, getattr(after, name))
        row.updated_at = self.clock()
        await session.flush()
        if settle:
            await self._settle(session, await self._covered(session, row), policy, actor, now)
        return row, True

    async def _covered(self, session: AsyncSession, row: SubscriptionRow) -> list[uuid.UUID]:
        if row.user_id is not None:
            return [row.user_id]
        assert row.team_id is not None
        return [member.user_id for member, _ in await Teams(session).members(row.team_id)]

    async def _settle(
        self,
        session: AsyncSession,
        user_ids: Sequence[uuid.UUID],
        policy: Policy,
        actor: Actor,
        now: datetime | None = None,
    ) -> None:
        """Give each user the best plan their live subscriptions (their own, and their team's
        when they hold one of its seats) give at ``now``; without one, the plan they were given
        by hand (``User.base_plan``), or the free plan. Each move is written to the audit log
        (``billing.plan``) as ``actor``'s."""
        if not user_ids:
            return
        now = now or self.clock()
        subscriptions, teams = Subscriptions(session), Teams(session)
        best: dict[uuid.UUID, list[str]] = {user_id: [] for user_id in user_ids}
        for row in await subscriptions.live_of_users(list(user_ids)):
            plan = entitlement(state_of(row), now, policy)
            if plan is not None and row.user_id in best:
                best[row.user_id].append(plan)
        seats: dict[uuid.UUID, tuple[str | None, list[uuid.UUID]]] = {}
        for user_id in user_ids:
            membership = await teams.membership(user_id)
            if membership is None:
                continue
            if membership.team_id not in seats:
                team_row = await subscriptions.live_of_team(membership.team_id)
                plan = entitlement(state_of(team_row), now, policy) if team_row else None
                members = [m.user_id for m, _ in await teams.members(membership.team_id)]
                held = members[: team_row.seats] if team_row is not None else []
                seats[membership.team_id] = (plan, held)
            plan, held = seats[membership.team_id]
            if plan is not None and user_id in held:
                best[user_id].append(plan)
        for user_id, plans in best.items():
            user = await session.get(User, user_id)
            if user is None:
                continue
            chosen = max(plans, key=policy.rank) if plans else self._own_plan(user)
            if user.plan != chosen:
                moved = {"from": user.plan, "to": chosen}
                log.info("plan changed by billing", extra={"user": str(user_id), **moved})
                await actor.audit("billing.plan", user.email, moved).write(session)
                user.plan = chosen

    def _own_plan(self, user: User) -> str:
        """The plan a user has apart from billing: the one given by hand, if it still exists."""
        if user.base_plan is not None and user.base_plan in self.plans.names():
            return user.base_plan
        return self.free_plan

    # --- Subjects -------------------------------------------------------------------------------

    async def _user(self, session: AsyncSession, email: str) -> User:
        user = await Accounts(session).user_by_email(email.strip().lower())
        if user is None:
            raise NotFound(f"no user with email {email}", param="email")
        return user

    async def _team(self, session: AsyncSession, name: str) -> Team:
        team = await Teams(session).by_name(name.strip())
        if team is None:
            raise no_team(name)
        return team

    async def _subject(
        self, session: AsyncSession, *, email: str | None, team: str | None
    ) -> Subject:
        if (email is None) == (team is None):
            raise InvalidRequest("Name either a user (email) or a team, not both.")
        if team is not None:
            return Subject("team", (await self._team(session, team)).id)
        assert email is not None
        return Subject("user", (await self._user(session, email)).id)

    async def _own_subject(
        self, session: AsyncSession, who: Principal, team: str | None
    ) -> Subject:
        """The subject a person acts for: themselves, or a team they own (admins: any team).
        Anyone else's team is as unknown to them as one that does not exist, so that nobody
        can learn which team names are taken (they are often customers' names)."""
        if team is None:
            return Subject("user", who.user_id)
        found = await self._team(session, team)
        if found.owner_id != who.user_id and not who.is_admin:
            raise no_team(team)
        return Subject("team", found.id)

    @staticmethod
    async def _record(
        session: AsyncSession,
        actor: Actor,
        action: str,
        subject: Subject,
        details: dict[str, Any],
    ) -> None:
        """Write ``actor``'s ``action`` on ``subject`` to the audit log, which names a subject
        by the user's email or the team's name."""
        found = await session.get(User if subject.kind == "user" else Team, subject.id)
        if isinstance(found, User):
            target = found.email
        else:
            target = found.name if isinstance(found, Team) else str(subject)
        await actor.audit(action, target, details).write(session)

    @staticmethod
    async def _current(session: AsyncSession, subject: Subject) -> SubscriptionRow | None:
        subscriptions = Subscriptions(session)
        if subject.kind == "user":
            return await subscriptions.current(user_id=subject.id)
        return await subscriptions.current(team_id=subject.id)

    # --- Teams ----------------------------------------------------------------------------------

    async def create_team(
        self, name: str, owner: str | None = None, *, audit: Audit | None = None
    ) -> Team:
        name = name.strip()
        if not name or len(name) > 64:
            raise InvalidRequest("A team name is 1 to 64 characters.", param="name")
        async with self.db.transaction() as session:
            teams = Teams(session)
            if await teams.by_name(name) is not None:
                raise Conflict(f"a team named {name!r} already exists", param="name")
            owner_user = await self._user(session, owner) if owner else None
            team = await teams.add(
                Team(name=name, owner_id=owner_user.id if owner_user else None, created_at=utcnow())
            )
            if owner_user is not None:
                await self._join(session, team, owner_user, Actor.of(audit))
            await write_audit(session, audit)
            return team

    async def _join(self, session: AsyncSession, team: Team, user: User, actor: Actor) -> None:
        teams = Teams(session)
        membership = await teams.membership(user.id)
        if membership is not None:
            if membership.team_id == team.id:
                return
            raise Conflict(
                f"{user.email} is already in another team; remove them from it first",
                param="email",
            )
        live = await Subscriptions(session).live_of_team(team.id)
        if live is not None and len(await teams.members(team.id)) >= live.seats:
            how = (
                "grant it more seats first"
                if live.provider == "manual"
                else f'its owner can buy more: POST /api/billing/plan {{"team": "{team.name}", '
                f'"seats": {live.seats + 1}}}'
            )
            raise Conflict(
                f"team {team.name!r} has no free seat ({live.seats} of {live.seats} taken); {how}",
                code="no_free_seat",
            )
        await teams.join(TeamMember(user_id=user.id, team_id=team.id, joined_at=self.clock()))
        if live is not None:
            await self._settle(session, [user.id], self.policy(), actor)

    async def add_member(self, team: str, email: str, *, audit: Audit | None = None) -> None:
        async with self.db.transaction() as session:
            await self._join(
                session,
                await self._team(session, team),
                await self._user(session, email),
                Actor.of(audit),
            )
            await write_audit(session, audit)

    async def remove_member(self, team: str, email: str, *, audit: Audit | None = None) -> None:
        async with self.db.transaction() as session:
            found = await self._team(session, team)
            user = await self._user(session, email)
            teams = Teams(session)
            membership = await teams.membership(user.id)
            if membership is None or membership.team_id != found.id:
                raise NotFound(f"{user.email} is not in team {found.name!r}", param="email")
            await teams.leave(membership)
            if await Subscriptions(session).live_of_team(found.id) is not None:
                # The leaver loses the seat; the next member in line may get one.
                remaining = [m.user_id for m, _ in await teams.members(found.id)]
                await self._settle(session, [user.id, *remaining], self.policy(), Actor.of(audit))
            await write_audit(session, audit)

    async def team(self, name: str) -> dict[str, Any]:
        async with self.db.transaction() as session:
            found = await self._team(session, name)
            members = await Teams(session).members(found.id)
            live = await Subscriptions(session).live_of_team(found.id)
            owner = await session.get(User, found.owner_id) if found.owner_id else None
            return {
                "name": found.name,
                "owner": owner.email if owner else None,
                "created_at": found.created_at.isoformat(),
                "subscription": subscription_json(live) if live else None,
                "members": [
                    {
                        "email": user.email,
                        "plan": user.plan,
                        "joined_at": member.joined_at.isoformat(),
                        "seat": live is not None and index < live.seats,
                    }
                    for index, (member, user) in enumerate(members)
                ],
            }

    async def teams(self) -> list[dict[str, Any]]:
        async with self.db.transaction() as session:
            found = await Teams(session).list()
            return [
                {"name": team.name, "members": count, "created_at": team.created_at.isoformat()}
                for team, count in found
            ]

    # --- The manual provider: grants ------------------------------------------------------------

    async def grant(
        self,
        *,
        plan: str,
        until: datetime,
        email: str | None = None,
        team: str | None = None,
        seats: int = 1,
        audit: Audit | None = None,
    ) -> SubscriptionRow:
        """Give a user or team ``plan`` until ``until`` (invoiced outside Lamplighter). It
        applies at once, up or down, replacing the previous grant; it simply ends then."""
        self.plans.require(plan)
        now = self.clock()
        if until <= now:
            raise InvalidRequest("A grant must end in the future.", param="until")
        if seats < 1:
            raise InvalidRequest("A grant is for one seat or more.", param="seats")
        async with self.db.transaction() as session:
            subject = await self._subject(session, email=email, team=team)
            row = await self._current(session, subject)
            if row is not None and row.status != "ended" and row.provider != "manual":
                raise Conflict(
                    f"{email or team} pays through {row.provider}; cancel that subscription "
                    "before granting a plan by hand",
                    code="subscription_exists",
                )
            if row is not None and row.status == "ended":
                row = None

            def new() -> SubscriptionRow:
                made = SubscriptionRow(provider="manual")
                subject.owns(made)
                return made

            applied, _ = await self._apply(
                session, row, Granted(now, plan, seats, until), actor=Actor.of(audit), new=new
            )
            assert applied is not None
            await write_audit(session, audit)
            return applied

    async def end(
        self, *, email: str | None = None, team: str | None = None, audit: Audit | None = None
    ) -> SubscriptionRow:
        """End a user's or team's subscription now (a Stripe one is cancelled in Stripe too)."""
        async with self.db.transaction() as session:
            subject = await self._subject(session, email=email, team=team)
            row = await self._current(session, subject)
            if row is None or row.status == "ended":
                raise NotFound(f"{email or team} has no subscription to end")
            ref = row.provider_ref
        if ref is not None:
            await self._provider(row).cancel(ref, at_period_end=False)
        async with self.db.transaction() as session:
            locked = await Subscriptions(session).lock(row.id)
            assert locked is not None
            await self._apply(session, locked, Terminated(self.clock()), actor=Actor.of(audit))
            await write_audit(session, audit)
            return locked

    # --- Self-service ---------------------------------------------------------------------------

    def for_sale(self) -> list[Plan]:
        return [plan for plan in self.plans.all() if plan.monthly_price or plan.yearly_price]

    async def overview(self, who: Principal) -> dict[str, Any]:
        """What the person's billing page shows: their plan, their subscription and team, and
        the plans they could buy."""
        async with self.db.transaction() as session:
            user = await session.get(User, who.user_id)
            own = await Subscriptions(session).current(user_id=who.user_id, lock=False)
            membership = await Teams(session).membership(who.user_id)
            team_json: dict[str, Any] | None = None
            if membership is not None:
                team = await session.get(Team, membership.team_id)
                live = await Subscriptions(session).live_of_team(membership.team_id)
                assert team is not None
                members = [m.user_id for m, _ in await Teams(session).members(team.id)]
                team_json = {
                    "name": team.name,
                    "owner": team.owner_id == who.user_id,
                    "subscription": subscription_json(live) if live else None,
                    "seat": live is not None and who.user_id in members[: live.seats],
                    "members": len(members),
                }
        return {
            "plan": user.plan if user else who.plan,
            "subscription": subscription_json(own) if own and own.status != "ended" else None,
            "team": team_json,
            "online": self.online,
            "plans": [
                {
                    "name": plan.name,
                    "monthly_price": plan.monthly_price,
                    "yearly_price": plan.yearly_price,
                    "currency": plan.currency,
                    "priority": plan.priority,
                    "requests_per_minute": plan.requests_per_minute,
                    "tokens_per_day": plan.tokens_per_day,
                }
                for plan in self.for_sale()
            ],
        }

    async def checkout(
        self,
        who: Principal,
        *,
        plan: str,
        period: Period,
        success_url: str,
        cancel_url: str,
        team: str | None = None,
        seats: int | None = None,
    ) -> stripe.CheckoutSession:
        """A Stripe Checkout session to subscribe (oneself, or a team one owns)."""
        chosen = self.plans.require(plan)
        if not chosen.price(period):
            raise InvalidRequest(f"Plan {chosen.name!r} is not sold by the {period}.", param="plan")
        if not self.online:
            raise InvalidRequest(
                "Paying online is not set up here: ask an admin to grant you the plan.",
                code="billing_not_configured",
            )
        async with self.db.transaction() as session:
            subject = await self._own_subject(session, who, team)
            row = await self._current(session, subject)
            if row is not None and row.status in LIVE:
                raise Conflict(
                    "There is a subscription already: change its plan instead.",
                    code="subscription_exists",
                )
            if subject.kind == "team":
                members = len(await Teams(session).members(subject.id))
                count = seats if seats is not None else max(1, members)
            else:
                count = 1
            customer = await Subscriptions(session).customer_of(
                **({"user_id": subject.id} if subject.kind == "user" else {"team_id": subject.id})
            )
        bucket = int(self.clock().timestamp()) // CHECKOUT_BUCKET_S
        made = await self.providers["stripe"].checkout(
            idempotency_key=f"checkout:{subject}:{chosen.name}:{period}:{count}:{bucket}",
            plan=chosen,
            period=period,
            seats=count,
            subject=str(subject),
            success_url=success_url,
            cancel_url=cancel_url,
            customer=customer,
            email=who.email if customer is None else None,
        )
        async with self.db.transaction() as session:
            details = {"plan": chosen.name, "period": period, "seats": count, "session": made.id}
            await self._record(session, Actor.person(who), "billing.checkout", subject, details)
        return made

    async def _self_service_row(
        self, session: AsyncSession, who: Principal, team: str | None
    ) -> SubscriptionRow:
        subject = await self._own_subject(session, who, team)
        row = await self._current(session, subject)
        if row is None or row.status == "ended":
            raise NotFound("There is no subscription to change.", code="no_subscription")
        if row.provider == "manual" and not who.is_admin:
            raise PermissionDenied(
                "This plan was granted by an admin; ask them to change it.",
                code="granted_plan",
            )
        return row

    async def change_plan(
        self, who: Principal, plan: str, *, team: str | None = None
    ) -> SubscriptionRow:
        """Move a subscription to another plan: an upgrade applies now (the very next request,
        on every replica), a downgrade at the end of the period."""
        chosen = self.plans.require(plan)
        async with self.db.transaction() as session:
            row = await self._self_service_row(session, who, team)
            if row.status not in LIVE:
                raise Conflict(f"A {row.status} subscription cannot change plan.")
            period: Period = "year" if row.period == "year" else "month"
            if not chosen.price(period) and row.provider != "manual":
                raise InvalidRequest(
                    f"Plan {chosen.name!r} is not sold by the {period}.", param="plan"
                )
            # The period is paid for at ``row.plan``; with a downgrade pending, the provider is
            # on the cheaper plan's price already. Going back to the paid plan (or below it) is
            # not charged; going above it is charged the difference from the paid plan only.
            upgrade = chosen.name != row.plan and self.policy().upgrade(row.plan, chosen.name)
            paid = self.plans.get(row.plan) if row.plan in self.plans.names() else None
            if not (upgrade and row.pending_plan and paid and paid.price(period)):
                paid = None
            ref, seats = row.provider_ref, row.seats
        if ref is not None:
            await self._provider(row).change_plan(
                ref, plan=chosen, period=period, seats=seats, upgrade=upgrade, paid=paid
            )
        change = ChangePlan(self.clock(), chosen.name)
        details = {"plan": chosen.name, "from": row.plan}
        return await self._decide(row.id, change, Actor.person(who), "billing.change", details)

    async def change_seats(
        self, who: Principal, seats: int, *, team: str | None
    ) -> SubscriptionRow:
        """Buy seats for a team's subscription, or give some back: it applies at once, and
        the provider prorates it (more seats are charged for the rest of the period). Fewer
        seats than members leaves the last to join without one."""
        if team is None:
            raise InvalidRequest("Seats are for a team subscription: name the team.", param="team")
        if seats < 1:
            raise InvalidRequest("A team subscription is for one seat or more.", param="seats")
        async with self.db.transaction() as session:
            row = await self._self_service_row(session, who, team)
            if row.status not in LIVE:
                raise Conflict(f"A {row.status} subscription cannot change its seats.")
            ref, before = row.provider_ref, row.seats
        if seats == before:
            return row
        if ref is not None:
            await self._provider(row).change_seats(ref, seats=seats)
        details = {"seats": seats, "from": before}
        return await self._decide(
            row.id, ChangeSeats(self.clock(), seats), Actor.person(who), "billing.seats", details
        )

    async def cancel(self, who: Principal, *, team: str | None = None) -> SubscriptionRow:
        """Cancel at the end of the period (the plan stays until then). Cancelling again (a
        second tab, a retry) changes nothing: only an unpaid subscription ends at once."""
        async with self.db.transaction() as session:
            row = await self._self_service_row(session, who, team)
            if row.status == "canceling":
                return row
            ref, paid_up = row.provider_ref, row.status in ("active", "trialing")
        if ref is not None:
            await self._provider(row).cancel(ref, at_period_end=paid_up)
        details = {"at_period_end": paid_up}
        return await self._decide(
            row.id, Cancel(self.clock()), Actor.person(who), "billing.cancel", details
        )

    async def portal(self, who: Principal, *, return_url: str, team: str | None = None) -> str:
        """Where the person (or a team's owner) pays what is due, changes their card and reads
        their invoices: Stripe's customer portal, which sends them back to ``return_url``.
        Stripe tells Lamplighter what changed there through the webhook, as ever."""
        async with self.db.transaction() as session:
            row = await self._self_service_row(session, who, team)
            customer = row.customer_ref
        if customer is None:
            raise Conflict(
                "This subscription has no Stripe customer yet: try again once its first "
                "payment has gone through.",
                code="no_customer",
            )
        return await self._provider(row).portal(customer, return_url=return_url)

    async def resume(self, who: Principal, *, team: str | None = None) -> SubscriptionRow:
        """Take a cancellation back before the period ends."""
        async with self.db.transaction() as session:
            row = await self._self_service_row(session, who, team)
            if row.status != "canceling":
                raise Conflict("The subscription is not being cancelled.")
            ref = row.provider_ref
        if ref is not None:
            await self._provider(row).resume(ref)
        return await self._decide(row.id, Resume(self.clock()), Actor.person(who), "billing.resume")

    def _provider(self, row: SubscriptionRow) -> Provider:
        provider = self.providers.get(row.provider)
        if provider is None:
            raise ServiceUnavailable(
                f"This subscription is paid through {row.provider}, which is not configured "
                "here (LAMPLIGHTER_STRIPE_SECRET_KEY)."
            )
        return provider

    async def _decide(
        self,
        subscription_id: uuid.UUID,
        event: Event,
        actor: Actor,
        action: str,
        details: dict[str, Any] | None = None,
    ) -> SubscriptionRow:
        """Apply a person's decision and write it to the audit log, in one transaction."""
        async with self.db.transaction() as session:
            row = await Subscriptions(session).lock(subscription_id)
            if row is None:
                raise NotFound("The subscription is gone.")
            await self._apply(session, row, event, actor=actor)
            await self._record(session, actor, action, Subject.of(row), details or {})
            return row

    # --- Stripe's webhook -----------------------------------------------------------------------

    async def stripe_event(self, payload: bytes, signature: str | None) -> str:
        """Verify and apply one webhook delivery; returns what became of it: applied,
        unchanged, ignored, unmatched, duplicate, or refused (a second live subscription for
        someone who has one: it is cancelled in Stripe)."""
        if not self.webhook_secret:
            raise NotFound(
                "Stripe webhooks are not configured here (LAMPLIGHTER_STRIPE_WEBHOOK_SECRET).",
                code="billing_not_configured",
            )
        stripe.verify(payload, signature, self.webhook_secret)
        event = stripe.parse(payload)
        event_id = f"stripe:{event['id']}"
        translation = stripe.translate(event, {p.name: p for p in self.plans.all()})
        for attempt in range(RACE_RETRIES):
            try:
                async with self.db.transaction() as session:
                    events = BillingEvents(session)
                    if await events.seen(event_id):
                        return "duplicate"
                    outcome, subscription_id = await self._stripe(session, translation)
                    if outcome == "refused" and self.online:
                        # Before the commit: should Stripe not be reached, nothing is stored and
                        # Stripe delivers the event again later.
                        assert translation.ref is not None
                        await self.providers["stripe"].cancel(translation.ref, at_period_end=False)
                    await events.record(
                        BillingEvent(
                            id=event_id,
                            type=str(event.get("type", ""))[:64],
                            received_at=self.clock(),
                            subscription_id=subscription_id,
                            outcome=outcome,
                        )
                    )
                    return outcome
            except IntegrityError:
                # Another replica handled this event, or created its subscription, at the same
                # moment: try again, and find out which.
                if attempt == RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _stripe(
        self, session: AsyncSession, translation: stripe.Translation
    ) -> tuple[str, uuid.UUID | None]:
        if translation.ref is None or translation.event is None:
            return "ignored", None
        row = await Subscriptions(session).by_ref(translation.ref)
        if row is not None:
            if translation.customer and not row.customer_ref:
                row.customer_ref = translation.customer
            _, changed = await self._apply(session, row, translation.event, actor=STRIPE)
            return ("applied" if changed else "unchanged"), row.id
        first = translation.creates or translation.event
        subject = Subject.parse(translation.subject)
        known = isinstance(first, Started) or (isinstance(first, Snapshot) and bool(first.plan))
        if subject is None or not known:
            # An invoice before its subscription, or a subscription made outside Lamplighter:
            # the subscription's own events carry everything, so nothing is lost.
            return "unmatched", None
        exists = await session.get(User if subject.kind == "user" else Team, subject.id)
        if exists is None:
            return "unmatched", None

        def new() -> SubscriptionRow:
            made = SubscriptionRow(
                provider="stripe", provider_ref=translation.ref, customer_ref=translation.customer
            )
            subject.owns(made)
            return made

        kept = await self._current(session, subject)
        # A second live one is not settled: it is ended below, before anyone gets its plan.
        clash = kept is not None and kept.provider == "stripe" and kept.status in LIVE
        made, _ = await self._apply(session, None, first, actor=STRIPE, new=new, settle=not clash)
        if made is None:
            return "ignored", None
        if kept is None or not clash or made.status not in LIVE:
            # Not live, it gives nobody a plan: there was nothing to settle.
            return "applied", made.id
        # Two checkouts paid (two tabs, a plan picked and then another): one person would pay
        # twice for one plan, and see and cancel only one subscription. The first one stays;
        # this one ends now (in Stripe too, when its secret key is set here), and the audit log
        # tells the operator which payment to refund.
        await self._apply(session, made, Terminated(self.clock()), actor=STRIPE)
        details = {
            "subscription": translation.ref,
            "plan": made.plan,
            "kept": kept.provider_ref,
            "cancelled_in_stripe": self.online,
        }
        log.warning("a second subscription was refused", extra={"subject": str(subject), **details})
        await self._record(session, STRIPE, "billing.refused", subject, details)
        return "refused", made.id

    # --- Time -----------------------------------------------------------------------------------

    async def sweep(self, now: datetime | None = None) -> int:
        """Apply every period end and grace expiry due by ``now``; how many changed."""
        now = now or self.clock()
        async with self.db.transaction() as session:
            due = await Subscriptions(session).due(now, now - self.grace)
        changed = 0
        for subscription_id in due:
            async with self.db.transaction() as session:
                row = await Subscriptions(session).lock(subscription_id)
                if row is None:
                    continue
                _, moved = await self._apply(session, row, Tick(now), actor=SYSTEM)
                changed += moved
        return changed

    async def sweep_forever(self, interval: float) -> None:
        """Sweep every ``interval`` seconds, for as long as the server runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("applying subscription period ends failed; trying again later")
