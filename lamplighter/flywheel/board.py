"""The model leaderboard as the store stands: counted side-by-side votes fitted by
``leaderboard.py``, with the voters whose votes look random or reversed set aside first (as
Chatbot Arena does), and the flywheel's figures for the operator console."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Any, cast

from sqlalchemy import case, func, select

from lamplighter.flywheel.credits import Credits
from lamplighter.flywheel.leaderboard import Outcome, Vote, check_voters, leaderboard
from lamplighter.flywheel.trust import PRIOR_TRUST
from lamplighter.store.database import Database
from lamplighter.store.models import Comparison, Credit, ExportRun, User

# Trust buckets the console draws: [0, 0.2), [0.2, 0.4), ... [0.8, 1].
TRUST_BUCKETS = 5


async def counted_votes(db: Database, since: datetime | None = None) -> list[Vote]:
    """Every side-by-side vote that counts: voted, not discarded; oldest first."""
    statement = (
        select(Comparison.user_id, Comparison.a_variant, Comparison.b_variant, Comparison.winner)
        .where(
            Comparison.kind == "side_by_side",
            Comparison.winner.is_not(None),
            Comparison.discarded.is_(None),
        )
        .order_by(Comparison.voted_at, Comparison.id)
    )
    if since is not None:
        statement = statement.where(Comparison.voted_at > since)
    votes: list[Vote] = []
    async with db.transaction() as session:
        result = await session.stream(statement.execution_options(yield_per=5000))
        async for user_id, a, b, winner in result:
            votes.append(Vote(str(user_id), a, b, cast(Outcome, winner)))
    return votes


def _board(votes: list[Vote], rounds: int, seed: int) -> dict[str, Any]:
    checks = check_voters(votes)
    suspicious = {check.voter for check in checks if check.suspicious}
    kept = [vote for vote in votes if vote.voter not in suspicious]
    return {
        "votes": len(votes),
        "counted": len(kept),
        "voters": len({vote.voter for vote in kept}),  # whose votes are counted, as "counted"
        "models": [asdict(standing) for standing in leaderboard(kept, rounds=rounds, seed=seed)],
        "suspicious_voters": [asdict(check) for check in checks if check.suspicious],
    }


async def standings(
    db: Database, *, rounds: int = 1000, seed: int = 0, since: datetime | None = None
) -> dict[str, Any]:
    """The leaderboard: Bradley-Terry scores with bootstrap intervals, from the votes of
    everyone the bad-voter check does not flag. The fitting runs off the event loop."""
    votes = await counted_votes(db, since)
    return await asyncio.to_thread(_board, votes, rounds, seed)


async def figures(db: Database, credits: Credits, consent_default: bool) -> dict[str, Any]:
    """Consent, rater trust and credits, for the console's flywheel page."""
    trust, groups = await credits.estimate()
    buckets = [0] * TRUST_BUCKETS
    checked = 0
    for rater, value in trust.raters.items():
        if trust.evidence.get(rater, 0) >= credits.policy.min_evidence:
            checked += 1
            buckets[min(TRUST_BUCKETS - 1, int(value * TRUST_BUCKETS))] += 1
    members: dict[str, int] = {}
    for group in groups.values():
        members[group] = members.get(group, 0) + 1
    consenting = (
        case((User.training_consent.is_(None), consent_default), else_=User.training_consent)
        if consent_default
        else func.coalesce(User.training_consent, False)
    )
    async with db.transaction() as session:
        users, consents = (
            await session.execute(
                select(func.count(), func.sum(case((consenting, 1), else_=0))).select_from(User)
            )
        ).one()
        credit_rows = await session.execute(
            select(Credit.status, func.count(), func.coalesce(func.sum(Credit.tokens), 0)).group_by(
                Credit.status
            )
        )
        by_status = {status: (int(n), int(tokens)) for status, n, tokens in credit_rows}
    return {
        "consent_rate": (int(consents or 0) / users) if users else None,
        "rater_trust": {
            "raters": len(trust.raters),
            "checked": checked,
            "below": sum(
                1
                for rater, value in trust.raters.items()
                if trust.evidence.get(rater, 0) >= credits.policy.min_evidence
                and value < credits.policy.min_trust
            ),
            "min_trust": credits.policy.min_trust,
            "prior": PRIOR_TRUST,
            "buckets": buckets,
            "puppet_groups": sum(1 for n in members.values() if n > 1),
        },
        "credits": {
            status: {"count": n, "tokens": tokens} for status, (n, tokens) in by_status.items()
        },
    }


async def exports(db: Database, limit: int = 10) -> list[dict[str, Any]]:
    """The latest export runs, newest first."""
    async with db.transaction() as session:
        runs = await session.scalars(
            select(ExportRun)
            .order_by(ExportRun.created_at.desc(), ExportRun.id.desc())
            .limit(limit)
        )
        return [
            {
                "id": run.id,
                "created_at": run.created_at.isoformat(),
                "kind": run.kind,
                "format": run.format,
                "rows": run.rows,
                "conversations": run.conversations,
                "since": run.since.isoformat() if run.since else None,
                "min_trust": run.min_trust,
                "removed": run.removed,
                "sha256": run.sha256,
                "out": run.out,
            }
            for run in runs
        ]
