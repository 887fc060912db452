"""The review queue: findings of the abuse watch become reports; an admin dismisses one or acts
on it (suspend or ban the accounts its evidence names) in one step, audit-logged."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.abuse.watch import Finding
from lamplighter.accounts import AccountService
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
        """Dismiss a report, or suspend / ban every account it names."""
        if action not in {"dismiss", "suspend", "ban"}:
            raise InvalidRequest("action must be dismiss, suspend or ban", param="action")
        async with self.db.transaction() as session:
            report = await session.get(AbuseReport, report_id)
            if report is None or report.status != "open":
                raise NotFound(f"no open report {report_id}", code="report_not_found")
            emails = await self._accounts(session, report)
        until = utcnow() + timedelta(days=days) if days else None
        for email in emails if action != "dismiss" else []:
            await self.accounts.suspend(
                email, f"{report.kind}: {reason}", until=until, banned=action == "ban"
            )
        async with self.db.transaction() as session:
            report = await session.get(AbuseReport, report_id)
            assert report is not None
            report.status = "dismissed" if action == "dismiss" else "actioned"
            report.resolution = f"{action}: {reason}" + (
                f" ({len(emails)} accounts)" if emails else ""
            )
            report.resolved_by, report.resolved_at = audit.actor_email, utcnow()
            details = {**audit.details, "accounts": emails}
            await write_audit(
                session,
                Audit(audit.actor_id, audit.actor_email, audit.action, audit.target, details),
            )
            return report

    @staticmethod
    async def _accounts(session: AsyncSession, report: AbuseReport) -> list[str]:
        """The emails of the accounts a report is about."""
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
        if ids:
            found = await session.execute(select(User.email).where(User.id.in_(ids)))
            emails += list(found.scalars())
        return list(dict.fromkeys(emails))
