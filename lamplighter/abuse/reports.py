"""The review queue: findings of the abuse watch become reports; an admin dismisses one or acts
on it (suspend or ban the accounts its evidence names) in one step, audit-logged."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.abuse.watch import Finding
from lamplighter.accounts import AccountService, lock_out
from lamplighter.exceptions import InvalidRequest, NotFound
from lamplighter.store.audit import Audit
from lamplighter.store.audit import write as write_audit
from lamplighter.store.database import Database
from lamplighter.store.models import AbuseReport, User, utcnow

log = logging.getLogger(__name__)


class ReviewQueue:
    def __init__(self, db: Database, accounts: AccountService) -> None:
        self.db = db
        self.accounts = accounts

    async def file(self, findings: Sequence[Finding]) -> None:
        """Open a report per finding (evidence and suggested response kept as found)."""
        if not findings:
            return
        async with self.db.transaction() as session:
            for finding in findings:
                log.warning(
                    "abuse finding",
                    extra={"kind": finding.kind, "subject": finding.subject,
                           "response": finding.response},
                )  # fmt: skip
                session.add(
                    AbuseReport(
                        created_at=utcnow(),
                        kind=finding.kind,
                        subject=finding.subject,
                        response=finding.response,
                        evidence=dict(finding.evidence),
                        status="open",
                    )
                )

    async def recent(self, status: str | None, limit: int) -> Sequence[AbuseReport]:
        async with self.db.transaction() as session:
            statement = select(AbuseReport).order_by(AbuseReport.id.desc()).limit(limit)
            if status:
                statement = statement.where(AbuseReport.status == status)
            return (await session.execute(statement)).scalars().all()

    async def resolve(
        self, report_id: int, action: str, reason: str, days: int | None, audit: Audit
    ) -> AbuseReport:
        """Dismiss a report, or suspend (``days``, or until restored) or ban every account it
        names — admins excepted — in one transaction with its audit entry, so a report is
        never half acted on, and two admins cannot both act on it."""
        if action not in {"dismiss", "suspend", "ban"}:
            raise InvalidRequest("action must be dismiss, suspend or ban", param="action")
        now = utcnow()
        until = now + timedelta(days=days) if days and action == "suspend" else None
        async with self.db.transaction() as session:
            report = await session.get(AbuseReport, report_id, with_for_update=True)
            if report is None or report.status != "open":
                raise NotFound(f"no open report {report_id}", code="report_not_found")
            users = await self._users(session, report)
            acted: list[str] = []
            spared: list[str] = []
            for user in users if action != "dismiss" else []:
                if user.is_admin:
                    spared.append(user.email)
                    continue
                await lock_out(
                    session, user, f"{report.kind}: {reason}", until=until, banned=action == "ban"
                )
                acted.append(user.email)
            report.status = "dismissed" if action == "dismiss" else "actioned"
            length = (
                f" for {days} days" if until else (" until restored" if action == "suspend" else "")
            )
            counted = f"{len(acted)} accounts" if action != "dismiss" else ""
            report.resolution = f"{action}{length}: {reason}" + (f" ({counted})" if counted else "")
            report.resolved_by, report.resolved_at = audit.actor_email, now
            details = {**audit.details, "days": days, "accounts": acted, "spared_admins": spared}
            await write_audit(
                session,
                Audit(audit.actor_id, audit.actor_email, audit.action, audit.target, details),
            )
            return report

    @staticmethod
    async def _users(session: AsyncSession, report: AbuseReport) -> list[User]:
        """The accounts a report is about (those that still exist), in evidence order."""
        kind, _, value = report.subject.partition(":")
        ids: list[uuid.UUID] = []
        emails: list[str] = []
        if kind == "user":
            ids.append(uuid.UUID(value))
        elif kind == "email":
            emails.append(value)
        named = report.evidence.get("accounts")
        for account in named if isinstance(named, list) else []:
            try:
                ids.append(uuid.UUID(str(account)))
            except ValueError:
                emails.append(str(account))
        found = await session.execute(
            select(User).where(or_(User.id.in_(ids), User.email.in_(emails)))
        )
        users = {user.id: user for user in found.scalars()}
        order = {key: rank for rank, key in enumerate([*map(str, ids), *emails])}
        return sorted(
            users.values(), key=lambda u: min(order.get(str(u.id), 1e9), order.get(u.email, 1e9))
        )
