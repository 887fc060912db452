"""Queries on teams, subscriptions, payment provider events, and the usage behind statements."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import (
    BillingEvent,
    SubscriptionRow,
    Team,
    TeamMember,
    Usage,
    User,
)


class Teams:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_name(self, name: str) -> Team | None:
        result = await self.session.execute(select(Team).where(Team.name == name))
        return result.scalar_one_or_none()

    async def add(self, team: Team) -> Team:
        self.session.add(team)
        await self.session.flush()
        return team

    async def membership(self, user_id: uuid.UUID) -> TeamMember | None:
        return await self.session.get(TeamMember, user_id)

    async def members(self, team_id: uuid.UUID) -> Sequence[tuple[TeamMember, User]]:
        """Members in the order they joined (the order seats are given in)."""
        result = await self.session.execute(
            select(TeamMember, User)
            .join(User, User.id == TeamMember.user_id)
            .where(TeamMember.team_id == team_id)
            .order_by(TeamMember.joined_at, TeamMember.user_id)
        )
        return [(member, user) for member, user in result.all()]

    async def join(self, member: TeamMember) -> None:
        self.session.add(member)
        await self.session.flush()

    async def leave(self, member: TeamMember) -> None:
        await self.session.delete(member)
        await self.session.flush()

    async def list(self) -> Sequence[tuple[Team, int]]:
        counts = (
            select(TeamMember.team_id, func.count().label("members"))
            .group_by(TeamMember.team_id)
            .subquery()
        )
        result = await self.session.execute(
            select(Team, counts.c.members)
            .outerjoin(counts, counts.c.team_id == Team.id)
            .order_by(Team.name)
        )
        return [(team, int(members or 0)) for team, members in result.all()]


class Subscriptions:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: SubscriptionRow) -> SubscriptionRow:
        self.session.add(row)
        await self.session.flush()
        return row

    async def by_ref(self, provider_ref: str) -> SubscriptionRow | None:
        """The subscription a provider calls ``provider_ref``, locked until the transaction
        ends (on PostgreSQL), so two events about it are applied one after the other."""
        result = await self.session.execute(
            select(SubscriptionRow)
            .where(SubscriptionRow.provider_ref == provider_ref)
            .with_for_update()
        )
        return result.scalar_one_or_none()

    async def lock(self, subscription_id: uuid.UUID) -> SubscriptionRow | None:
        result = await self.session.execute(
            select(SubscriptionRow).where(SubscriptionRow.id == subscription_id).with_for_update()
        )
        return result.scalar_one_or_none()

    async def current(
        self,
        *,
        user_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        lock: bool = True,
    ) -> SubscriptionRow | None:
        """The subject's latest subscription that has not ended, else its latest; locked until
        the transaction ends (on PostgreSQL) unless ``lock`` is False."""
        subject = (
            SubscriptionRow.user_id == user_id
            if user_id is not None
            else SubscriptionRow.team_id == team_id
        )
        statement = (
            select(SubscriptionRow)
            .where(subject)
            .order_by(
                case((SubscriptionRow.status == "ended", 1), else_=0), SubscriptionRow.id.desc()
            )
            .limit(1)
        )
        if lock:
            statement = statement.with_for_update()
        result = await self.session.execute(statement)
        return result.scalar_one_or_none()

    async def customer_of(
        self, *, user_id: uuid.UUID | None = None, team_id: uuid.UUID | None = None
    ) -> str | None:
        """The provider's customer id from the subject's earlier subscriptions, if any."""
        subject = (
            SubscriptionRow.user_id == user_id
            if user_id is not None
            else SubscriptionRow.team_id == team_id
        )
        result = await self.session.execute(
            select(SubscriptionRow.customer_ref)
            .where(subject, SubscriptionRow.customer_ref.is_not(None))
            .order_by(SubscriptionRow.id.desc())
            .limit(1)
        )
        return result.scalar_one_or_none()

    async def due(self, now: datetime, grace_start: datetime) -> Sequence[uuid.UUID]:
        """Subscriptions a period end or a grace expiry may have moved by ``now``
        (``grace_start``: now minus the grace period, for renewals never heard of)."""
        result = await self.session.execute(
            select(SubscriptionRow.id).where(
                SubscriptionRow.status.not_in(("ended",)),
                or_(
                    SubscriptionRow.grace_until <= now,
                    (SubscriptionRow.period_end <= now)
                    & (
                        (SubscriptionRow.status == "canceling")
                        | SubscriptionRow.renews.is_(False)
                        | SubscriptionRow.pending_plan.is_not(None)
                        | (SubscriptionRow.period_end <= grace_start)
                    ),
                ),
            )
        )
        return result.scalars().all()

    async def live_of_users(self, user_ids: Sequence[uuid.UUID]) -> Sequence[SubscriptionRow]:
        result = await self.session.execute(
            select(SubscriptionRow).where(
                SubscriptionRow.user_id.in_(user_ids), SubscriptionRow.status != "ended"
            )
        )
        return result.scalars().all()

    async def live_of_team(self, team_id: uuid.UUID) -> SubscriptionRow | None:
        result = await self.session.execute(
            select(SubscriptionRow)
            .where(SubscriptionRow.team_id == team_id, SubscriptionRow.status != "ended")
            .order_by(SubscriptionRow.id.desc())
            .limit(1)
        )
        return result.scalar_one_or_none()


class BillingEvents:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def seen(self, event_id: str) -> bool:
        return await self.session.get(BillingEvent, event_id) is not None

    async def record(self, event: BillingEvent) -> None:
        self.session.add(event)
        await self.session.flush()


@dataclass(frozen=True)
class StatementLine:
    """One user's usage under one plan in a period."""

    email: str
    team: str | None
    plan: str | None
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Statements:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lines(
        self, start: datetime, end: datetime, team_id: uuid.UUID | None = None
    ) -> AsyncIterator[StatementLine]:
        """Usage from ``start`` (inclusive) to ``end`` (exclusive) by user and the plan each
        request was served under, streamed; only ``team_id``'s members when given."""
        statement = (
            select(
                User.email,
                Team.name,
                Usage.plan,
                func.count(),
                func.sum(Usage.cached.cast(Integer)),
                func.sum(Usage.prompt_tokens),
                func.sum(Usage.completion_tokens),
            )
            .join(User, User.id == Usage.user_id)
            .outerjoin(TeamMember, TeamMember.user_id == Usage.user_id)
            .outerjoin(Team, Team.id == TeamMember.team_id)
            .where(Usage.created_at >= start, Usage.created_at < end)
            .group_by(User.email, Team.name, Usage.plan)
            .order_by(Team.name, User.email, Usage.plan)
        )
        if team_id is not None:
            statement = statement.where(TeamMember.team_id == team_id)
        result = await self.session.stream(statement.execution_options(yield_per=500))
        async for email, team, plan, requests, cached, prompt, completion in result:
            yield StatementLine(
                email=email,
                team=team,
                plan=plan,
                requests=int(requests),
                cached_requests=int(cached or 0),
                prompt_tokens=int(prompt or 0),
                completion_tokens=int(completion or 0),
            )
