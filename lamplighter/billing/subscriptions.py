"""A subscription as an explicit state machine: pure data in, pure data out.

::

                 Paid / Snapshot(active)
    incomplete ───────────────────────────┐
                                          v
    trialing ──Paid──> active <──Resume── canceling ──period end──> ended
       │                 │  ^                 ^
       │                 │  └──Paid──┐        └──Cancel (active, trialing)
       │           PaymentFailed     │
       │                 v           │
       └─────────────> past_due ─────┤
                         │ grace runs out
                         v           │
                      suspended ─────┘  (Paid: the debt is settled)

    any state ──Terminated──> ended         ended is final: nothing moves it again

Which plan a subscription gives is :func:`entitlement`: the plan of a live subscription
(trialing, active, canceling before its period end, past_due within its grace), and nothing
otherwise. An upgrade (a plan that costs more) applies at once; a downgrade waits in
``pending_plan`` until the period ends. Time never moves inside: every event carries its own
``at`` and :class:`Tick` applies period ends and grace expiries when the caller says it is time.

Provider events may arrive late, twice, or out of order. :func:`step` makes that harmless:
replaying an event right after itself changes nothing, a provider snapshot older than the one
applied (``provider_at``) is ignored, payment news older than the last (``payment_at``) is
ignored, period ends only move forward, and ``ended`` is final, so a deletion followed by a late
update stays deleted. The service (``service.py``) also stores each provider event's id and
drops an id it has seen, so a replay later on is a no-op as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

Status = Literal["incomplete", "trialing", "active", "past_due", "suspended", "canceling", "ended"]
STATUSES: tuple[Status, ...] = (
    "incomplete",
    "trialing",
    "active",
    "past_due",
    "suspended",
    "canceling",
    "ended",
)
# States in which the subscription is paid for (or on trial) and may change plan.
LIVE: frozenset[Status] = frozenset({"trialing", "active", "past_due", "canceling"})
Period = Literal["month", "year"]


@dataclass(frozen=True)
class Policy:
    """What the machine needs to know of the world: how long a failed payment is forgiven, and
    how plans compare (a higher rank costs more: moving up is an upgrade)."""

    grace: timedelta = timedelta(days=7)
    ranks: Mapping[str, tuple[int, int]] | None = None

    def rank(self, plan: str) -> tuple[int, int]:
        return (self.ranks or {}).get(plan, (0, 0))

    def upgrade(self, old: str, new: str) -> bool:
        """Whether moving from ``old`` to ``new`` applies now (it costs the same or more)."""
        return self.rank(new) >= self.rank(old)


@dataclass(frozen=True)
class Subscription:
    status: Status
    plan: str
    period: Period
    seats: int
    # The end of the period paid for (or granted, or on trial).
    period_end: datetime
    # Whether the provider renews it by itself (Stripe); a manual grant simply ends.
    renews: bool
    # A downgrade waiting for the period end.
    pending_plan: str | None = None
    # While past_due: when the plan is taken away if still unpaid.
    grace_until: datetime | None = None
    ended_at: datetime | None = None
    # The provider's time of the last snapshot applied, and of the last payment news.
    provider_at: datetime | None = None
    payment_at: datetime | None = None


# --- Events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A new subscription (a completed checkout, or a provider's first word of it)."""

    at: datetime
    plan: str
    period: Period
    seats: int
    period_end: datetime
    renews: bool = True
    status: Status = "active"


@dataclass(frozen=True)
class Snapshot:
    """The provider's whole view of the subscription at ``at`` (Stripe's subscription object),
    in Stripe's status words: incomplete, incomplete_expired, trialing, active, past_due, unpaid,
    canceled, paused. ``plan`` is empty when the provider's price names no plan of ours: the
    subscription keeps its plan."""

    at: datetime
    status: str
    plan: str
    seats: int
    period_end: datetime
    cancel_at_period_end: bool = False
    period: Period = "month"


@dataclass(frozen=True)
class ChangePlan:
    """The subscriber (or an admin on their behalf) picks another plan."""

    at: datetime
    plan: str


@dataclass(frozen=True)
class ChangeSeats:
    """A team's owner buys seats, or gives some back: it applies at once."""

    at: datetime
    seats: int


@dataclass(frozen=True)
class Cancel:
    """Stop at the end of the period (or now, when nothing is paid for)."""

    at: datetime


@dataclass(frozen=True)
class Resume:
    """Take back a cancellation before the period ends."""

    at: datetime


@dataclass(frozen=True)
class Paid:
    """A payment went through; it covers up to ``period_end``."""

    at: datetime
    period_end: datetime


@dataclass(frozen=True)
class PaymentFailed:
    at: datetime


@dataclass(frozen=True)
class Granted:
    """An admin grants ``plan`` until ``period_end`` (the manual provider): applies at once,
    up or down, and ends then."""

    at: datetime
    plan: str
    seats: int
    period_end: datetime


@dataclass(frozen=True)
class Terminated:
    """The provider deleted the subscription, or an admin ended it now."""

    at: datetime


@dataclass(frozen=True)
class Tick:
    """It is ``at`` now: apply period ends and grace expiries that are due."""

    at: datetime


Event = (
    Started
    | Snapshot
    | ChangePlan
    | ChangeSeats
    | Cancel
    | Resume
    | Paid
    | PaymentFailed
    | Granted
    | Terminated
    | Tick
)


# --- The transition function -------------------------------------------------------------------


def step(sub: Subscription | None, event: Event, policy: Policy) -> Subscription | None:
    """The subscription after ``event``. ``None`` is no subscription yet; only
    :class:`Started`, :class:`Snapshot` and :class:`Granted` create one."""
    if sub is None:
        return _create(event, policy)
    if sub.status == "ended":
        return sub
    match event:
        case Started():
            return sub
        case Snapshot():
            return _snapshot(sub, event, policy)
        case ChangePlan(at=at, plan=plan):
            if sub.status not in LIVE:
                return sub
            return _change_plan(_decided(sub, at), plan, policy)
        case ChangeSeats(at=at, seats=seats):
            if sub.status not in LIVE or seats < 1:
                return sub
            return replace(_decided(sub, at), seats=seats)
        case Cancel(at=at):
            if sub.status in ("active", "trialing"):
                return replace(_decided(sub, at), status="canceling")
            if sub.status in ("incomplete", "past_due", "suspended"):
                return _end(sub, at)
            return sub
        case Resume(at=at):
            if sub.status == "canceling" and at < sub.period_end:
                return replace(_decided(sub, at), status="active")
            return sub
        case Paid():
            return _paid(sub, event)
        case PaymentFailed(at=at):
            if _older(at, sub.payment_at):
                return sub
            sub = replace(sub, payment_at=at)
            if sub.status in ("active", "trialing"):
                return replace(sub, status="past_due", grace_until=at + policy.grace)
            return sub
        case Granted():
            return replace(
                sub,
                status="active",
                plan=event.plan,
                seats=event.seats,
                period_end=event.period_end,
                renews=False,
                pending_plan=None,
                grace_until=None,
            )
        case Terminated(at=at):
            return _end(sub, at)
        case Tick(at=at):
            return _tick(sub, at, policy)
    raise TypeError(f"not a subscription event: {event!r}")


def _create(event: Event, policy: Policy) -> Subscription | None:
    match event:
        case Started():
            return Subscription(
                status=event.status,
                plan=event.plan,
                period=event.period,
                seats=event.seats,
                period_end=event.period_end,
                renews=event.renews,
                provider_at=event.at,
            )
        case Snapshot() if event.plan:
            first = Subscription(
                status="incomplete",
                plan=event.plan,
                period=event.period,
                seats=event.seats,
                period_end=event.period_end,
                renews=True,
            )
            return _snapshot(first, event, policy)
        case Granted():
            return Subscription(
                status="active",
                plan=event.plan,
                period="month",
                seats=event.seats,
                period_end=event.period_end,
                renews=False,
            )
    return None


def _older(at: datetime, seen: datetime | None) -> bool:
    return seen is not None and at < seen


def _decided(sub: Subscription, at: datetime) -> Subscription:
    """The subscriber decided at ``at`` (and told the provider first): a provider snapshot
    taken before that is out of date."""
    if sub.provider_at is None or sub.provider_at < at:
        return replace(sub, provider_at=at)
    return sub


def _end(sub: Subscription, at: datetime) -> Subscription:
    return replace(sub, status="ended", ended_at=at, pending_plan=None, grace_until=None)


def _change_plan(sub: Subscription, plan: str, policy: Policy) -> Subscription:
    if plan == sub.plan:
        return replace(sub, pending_plan=None)
    if policy.upgrade(sub.plan, plan):
        return replace(sub, plan=plan, pending_plan=None)
    return replace(sub, pending_plan=plan)


def _roll_over(sub: Subscription, period_end: datetime) -> Subscription:
    """A later period end: the new period starts, with the downgrade that waited for it."""
    if period_end <= sub.period_end:
        return sub
    plan = sub.pending_plan or sub.plan
    return replace(sub, period_end=period_end, plan=plan, pending_plan=None)


def _paid(sub: Subscription, event: Paid) -> Subscription:
    if _older(event.at, sub.payment_at):
        return sub
    sub = _roll_over(replace(sub, payment_at=event.at), event.period_end)
    if sub.status in ("incomplete", "trialing", "past_due", "suspended"):
        return replace(sub, status="active", grace_until=None)
    return sub


def _snapshot(sub: Subscription, event: Snapshot, policy: Policy) -> Subscription:
    if _older(event.at, sub.provider_at):
        return sub
    sub = _roll_over(
        replace(sub, provider_at=event.at, seats=max(1, event.seats)), event.period_end
    )
    plan = event.plan or sub.plan
    if plan != sub.plan or sub.pending_plan is not None:
        sub = _change_plan(sub, plan, policy)
    said = event.status
    if said in ("canceled", "incomplete_expired"):
        return _end(sub, event.at)
    if said in ("active", "trialing"):
        status: Status = "active" if said == "active" else "trialing"
        if event.cancel_at_period_end:
            status = "canceling"
        return replace(sub, status=status, grace_until=None)
    if said == "past_due":
        if sub.status in ("past_due", "suspended"):
            return sub
        return replace(sub, status="past_due", grace_until=event.at + policy.grace)
    if said in ("unpaid", "paused"):
        return replace(sub, status="suspended", grace_until=None)
    # "incomplete": the first payment is still due. It only ever comes first; a late copy
    # never takes a paid subscription back.
    return sub


def _tick(sub: Subscription, now: datetime, policy: Policy) -> Subscription:
    """Everything due at ``now``, applied until nothing more is (so a second tick at the same
    time changes nothing)."""
    while True:
        after = _due(sub, now, policy)
        if after == sub:
            return sub
        sub = after


def _due(sub: Subscription, now: datetime, policy: Policy) -> Subscription:
    if sub.status == "ended":
        return sub
    if sub.status == "past_due" and sub.grace_until is not None and now >= sub.grace_until:
        return replace(sub, status="suspended", grace_until=None)
    if now < sub.period_end:
        return sub
    if sub.status == "canceling" or not sub.renews:
        return _end(sub, sub.period_end)
    if sub.status in ("active", "trialing"):
        # The provider renews: the downgrade that waited starts with the new period, and a
        # renewal nobody heard of within the grace period is treated as unpaid.
        if sub.pending_plan is not None:
            return replace(sub, plan=sub.pending_plan, pending_plan=None)
        if now >= sub.period_end + policy.grace:
            return replace(sub, status="suspended")
    return sub


def entitlement(sub: Subscription | None, now: datetime, policy: Policy) -> str | None:
    """The plan ``sub`` gives at ``now``, or None. Agrees with what :class:`Tick` would do,
    so a sweep that runs late never lets anyone keep a plan they no longer have."""
    if sub is None:
        return None
    sub = _tick(sub, now, policy)
    if sub.status not in LIVE:
        return None
    return sub.plan


def add_period(at: datetime, period: str, count: int = 1) -> datetime:
    """``at`` plus ``count`` months or years, on the same day of the month (or the month's
    last day, when it is shorter)."""
    months = count * (12 if period == "year" else 1)
    index = at.month - 1 + months
    year, month = at.year + index // 12, index % 12 + 1
    for day in (at.day, 30, 29, 28):
        if day <= at.day:
            try:
                return at.replace(year=year, month=month, day=day)
            except ValueError:
                continue
    raise ValueError(f"cannot add {count} {period} to {at}")


def problems(sub: Subscription | None) -> list[str]:
    """What is wrong with ``sub`` (nothing, for any state :func:`step` can reach)."""
    if sub is None:
        return []
    found = []
    if sub.status not in STATUSES:
        found.append(f"unknown status {sub.status!r}")
    if (sub.grace_until is not None) != (sub.status == "past_due"):
        found.append("grace_until is set exactly while past_due")
    if (sub.ended_at is not None) != (sub.status == "ended"):
        found.append("ended_at is set exactly when ended")
    if sub.status == "ended" and sub.pending_plan is not None:
        found.append("an ended subscription has no pending plan")
    if sub.pending_plan is not None and sub.pending_plan == sub.plan:
        found.append("the pending plan is the plan already")
    if sub.seats < 1:
        found.append("fewer than one seat")
    return found
