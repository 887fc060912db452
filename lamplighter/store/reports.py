"""Read-only aggregates for the operator console: users with their recent usage, usage by plan
and by user over a period, daily series, and feedback counts."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ColumnElement, Date, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.models import ApiKey, Rating, Usage, User


@dataclass(frozen=True)
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _totals(requests: int | None, prompt: int | None, completion: int | None) -> UsageTotals:
    return UsageTotals(int(requests or 0), int(prompt or 0), int(completion or 0))


class Reports:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _day(self) -> ColumnElement[date]:
        """The UTC day of a usage record, on either database."""
        if self.session.get_bind().dialect.name == "sqlite":
            return func.date(Usage.created_at)
        return cast(func.timezone("UTC", Usage.created_at), Date)

    async def users(
        self, query: str, limit: int, since: datetime, offset: int = 0
    ) -> list[tuple[User, UsageTotals]]:
        """Users whose email contains ``query``, newest first (after the ``offset`` newest),
        with their usage since ``since``."""
        usage = (
            select(
                Usage.user_id,
                func.count().label("requests"),
                func.sum(Usage.prompt_tokens).label("prompt"),
                func.sum(Usage.completion_tokens).label("completion"),
            )
            .where(Usage.created_at >= since)
            .group_by(Usage.user_id)
            .subquery()
        )
        statement = (
            select(User, usage.c.requests, usage.c.prompt, usage.c.completion)
            .outerjoin(usage, usage.c.user_id == User.id)
            # Ids break ties of accounts made at once, so that pages neither skip nor repeat.
            .order_by(User.created_at.desc(), User.id.desc())
            .offset(offset)
            .limit(limit)
        )
        if query:
            statement = statement.where(
                or_(
                    func.lower(User.email).contains(query.lower(), autoescape=True),
                    User.plan == query,
                )
            )
        rows = await self.session.execute(statement)
        return [(user, _totals(r, p, c)) for user, r, p, c in rows]

    async def usage_of(self, user_id: uuid.UUID, since: datetime) -> UsageTotals:
        row = (
            await self.session.execute(
                select(
                    func.count(), func.sum(Usage.prompt_tokens), func.sum(Usage.completion_tokens)
                ).where(Usage.user_id == user_id, Usage.created_at >= since)
            )
        ).one()
        return _totals(*row)

    async def keys(self, user_id: uuid.UUID) -> Sequence[ApiKey]:
        result = await self.session.execute(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
        )
        return result.scalars().all()

    async def daily(
        self, user_id: uuid.UUID, days: int, today: date
    ) -> list[tuple[date, UsageTotals]]:
        """One entry per day of the last ``days`` days (today included), oldest first."""
        first = today - timedelta(days=days - 1)
        day = self._day()
        rows = await self.session.execute(
            select(
                day,
                func.count(),
                func.sum(Usage.prompt_tokens),
                func.sum(Usage.completion_tokens),
            )
            .where(
                Usage.user_id == user_id,
                Usage.created_at >= datetime.combine(first, datetime.min.time(), tzinfo=UTC),
            )
            .group_by(day)
        )
        found = {_as_date(d): _totals(r, p, c) for d, r, p, c in rows}
        return [
            (first + timedelta(days=i), found.get(first + timedelta(days=i), UsageTotals()))
            for i in range(days)
        ]

    async def by_plan(self, since: datetime) -> list[tuple[str, UsageTotals, int]]:
        """(plan, usage, distinct users) since ``since``, most tokens first."""
        rows = await self.session.execute(
            select(
                Usage.plan,
                func.count(),
                func.sum(Usage.prompt_tokens),
                func.sum(Usage.completion_tokens),
                func.count(func.distinct(Usage.user_id)),
            )
            .where(Usage.created_at >= since)
            .group_by(Usage.plan)
        )
        found = [(plan or "unknown", _totals(r, p, c), int(u)) for plan, r, p, c, u in rows]
        return sorted(found, key=lambda row: -row[1].total_tokens)

    async def top_users(
        self, since: datetime, limit: int, plan: str | None = None
    ) -> list[tuple[User, UsageTotals]]:
        """The heaviest users by tokens since ``since`` (only what they used on ``plan``)."""
        total = func.sum(Usage.prompt_tokens + Usage.completion_tokens)
        statement = (
            select(
                User,
                func.count(),
                func.sum(Usage.prompt_tokens),
                func.sum(Usage.completion_tokens),
            )
            .join(Usage, Usage.user_id == User.id)
            .where(Usage.created_at >= since)
            .group_by(User.id)
            .order_by(total.desc())
            .limit(limit)
        )
        if plan is not None:
            statement = statement.where(Usage.plan == plan)
        rows = await self.session.execute(statement)
        return [(user, _totals(r, p, c)) for user, r, p, c in rows]

    async def feedback(self, days: int, today: date) -> dict[str, object]:
        """Thumbs up and down: all-time counts, reasons given, and the last ``days`` days."""
        counts = dict(
            (rating, int(n))
            for rating, n in await self.session.execute(
                select(Rating.rating, func.count()).group_by(Rating.rating)
            )
        )
        reasons: Counter[str] = Counter()
        for (given,) in await self.session.execute(select(Rating.reasons)):
            reasons.update(given or [])
        first = today - timedelta(days=days - 1)
        daily: dict[date, Counter[int]] = {
            first + timedelta(days=i): Counter() for i in range(days)
        }
        since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
        for when, rating in await self.session.execute(
            select(Rating.updated_at, Rating.rating).where(Rating.updated_at >= since)
        ):
            daily.setdefault(when.astimezone(UTC).date(), Counter())[rating] += 1
        return {
            "thumbs_up": counts.get(1, 0),
            "thumbs_down": counts.get(-1, 0),
            "by_reason": dict(reasons.most_common()),
            "last_days": [
                {"day": day.isoformat(), "thumbs_up": c[1], "thumbs_down": c[-1]}
                for day, c in sorted(daily.items())
            ],
        }


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))
