"""Statements: usage per user (and team) in a billing period, from the usage ledger, as CSV.

A period is a calendar month in UTC (``2026-11``). Each line is one user's usage under one plan
(the plan the ledger recorded for each request, so an upgrade in the middle of the month shows
as two lines), with the team they are in now and the plan's list price for a month per seat.
The lines stream from the database: a statement of a million requests holds one line at a time.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from lamplighter.billing.service import no_team
from lamplighter.billing.subscriptions import add_period
from lamplighter.exceptions import InvalidRequest
from lamplighter.store.billing import StatementLine, Statements, Teams
from lamplighter.store.database import Database
from lamplighter.traffic.planbook import PlanBook

COLUMNS = (
    "period",
    "team",
    "email",
    "plan",
    "requests",
    "cached_requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "currency",
    "plan_price",
)
_PERIOD = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Period:
    name: str
    start: datetime
    end: datetime


def period(text: str) -> Period:
    """``YYYY-MM``: that month, from its first instant (UTC) to the next month's."""
    found = _PERIOD.fullmatch(text.strip())
    if found is None or not 1 <= int(found.group(2)) <= 12 or int(found.group(1)) < 1970:
        raise InvalidRequest(
            f"A billing period is a month written YYYY-MM (2026-11), not {text!r}.",
            param="period",
        )
    start = datetime(int(found.group(1)), int(found.group(2)), 1, tzinfo=UTC)
    return Period(found.group(0), start, add_period(start, "month"))


def row(line: StatementLine, when: Period, plans: PlanBook) -> list[str]:
    """One CSV row: a plan the ledger names but that no longer exists has no price."""
    plan = plans.require(line.plan) if line.plan in plans.names() else None
    return [
        when.name,
        line.team or "",
        line.email,
        line.plan or "",
        str(line.requests),
        str(line.cached_requests),
        str(line.prompt_tokens),
        str(line.completion_tokens),
        str(line.total_tokens),
        plan.currency if plan else "",
        str(plan.monthly_cost) if plan else "0",
    ]


async def team_id(db: Database, name: str | None) -> uuid.UUID | None:
    """The id of team ``name`` (None for None); a name that is no team is refused."""
    if name is None:
        return None
    async with db.transaction() as session:
        found = await Teams(session).by_name(name)
    if found is None:
        raise no_team(name)
    return found.id


async def rows(
    db: Database, plans: PlanBook, when: Period, team: uuid.UUID | None = None
) -> AsyncIterator[list[str]]:
    """The statement's rows (header first) for ``when``, of ``team``'s members if given."""
    yield list(COLUMNS)
    async with db.transaction() as session:
        async for line in Statements(session).lines(when.start, when.end, team):
            yield row(line, when, plans)


def csv_lines(rows: Iterable[list[str]]) -> Iterator[str]:
    """Each row as one CSV line (RFC 4180: quoted where needed, CRLF)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for values in rows:
        writer.writerow(values)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


async def csv_stream(source: AsyncIterator[list[str]]) -> AsyncIterator[str]:
    async for values in source:
        for text in csv_lines([values]):
            yield text
