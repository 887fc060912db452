"""The admin API, behind the operator console and ``lamplighter top``: live figures, plans,
users (search, usage, plan, suspend, ban, restore, keys), usage reports, feedback figures, and
the audit log every change here writes to.

Admins reach it with an API key or from a logged-in browser session (whose state-changing calls
carry the CSRF token). Anyone else gets 404, so the API's existence is not disclosed.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastPath
from pydantic import Field

from lamplighter.api import guard
from lamplighter.api.openai import principal, require_scope
from lamplighter.api.schemas import Body
from lamplighter.api.state import Services, State
from lamplighter.chat import Principal
from lamplighter.exceptions import InvalidRequest, NotFound, PermissionDenied
from lamplighter.flywheel import board
from lamplighter.store.accounts import Accounts
from lamplighter.store.audit import AuditLog
from lamplighter.store.models import User, utcnow
from lamplighter.store.reports import Reports, UsageTotals
from lamplighter.traffic.plans import PLAN_NAME
from lamplighter.web.session import CSRF_HEADER, UNSAFE, current_visitor, same_token

router = APIRouter(prefix="/api/admin")
# Ids in the 64-bit sequences (audit log, reports); a larger number is a 400, not a 500.
MAX_ID = 2**63 - 1


async def admin(request: Request, state: State) -> Principal:
    who: Principal | None = None
    csrf: str | None = None
    if request.headers.get("authorization"):
        who = await principal(request, state)
    else:
        visitor = await current_visitor(request, state)
        if visitor is not None:
            who, csrf = visitor.principal, visitor.csrf_token
    if who is None or not who.is_admin:
        raise NotFound(
            f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"
        )
    require_scope(who, "admin")
    unsafe = csrf is not None and request.method in UNSAFE
    if unsafe and not same_token(request.headers.get(CSRF_HEADER), csrf or ""):
        raise PermissionDenied(
            "Missing or wrong CSRF token. Reload the page and try again.", code="csrf_failed"
        )
    return who


Admin = Annotated[Principal, Depends(admin)]


class PlanChanges(Body):
    """Fields of a plan to change; those left out keep their value."""

    priority: int | None = Field(default=None, ge=0, le=100)
    requests_per_minute: int | None = Field(default=None, ge=1, le=10**9)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**15)
    tokens_per_day: int | None = Field(default=None, ge=1, le=10**15)
    concurrent_streams: int | None = Field(default=None, ge=1, le=10**6)
    max_tokens: int | None = Field(default=None, ge=1, le=10**8)
    models: list[str] | None = None
    queue_patience_s: float | None = Field(default=None, ge=0, le=3600)
    ttft_slo_s: float | None = Field(default=None, gt=0, le=3600)
    cache_ttl_s: float | None = Field(default=None, ge=0, le=86400)
    browser_only: bool | None = None
    # Prices per seat in minor units of currency (cents); 0: not sold for that period.
    monthly_price: int | None = Field(default=None, ge=0, le=10**12)
    yearly_price: int | None = Field(default=None, ge=0, le=10**12)
    currency: str | None = Field(default=None, pattern=r"^[a-z]{3}$")


class PlanChoice(Body):
    plan: str = Field(min_length=1, max_length=64)


class Suspension(Body):
    reason: str = Field(min_length=1, max_length=500)
    days: int | None = Field(default=None, ge=1, le=3650)


class Ban(Body):
    reason: str = Field(min_length=1, max_length=500)


class Nothing(Body):
    """An empty body: optional, as scripts send none (``curl -X POST``), but nothing else
    is accepted in it."""


@router.get("/stats")
async def stats(
    _: Admin, state: State, since: float | None = Query(default=None, ge=0)
) -> dict[str, Any]:
    """The console's live figures: points of the last hour, and the backends as they are."""
    metrics = state.chat.metrics
    pools = state.chat.admission.pools
    backends = []
    for backend in state.router.backends:
        pool = pools.get(backend.name)
        backends.append(
            {
                "name": backend.name,
                "models": list(backend.models),
                "capacity": backend.capacity,
                "ready": backend.ready,
                "queued": pool.queued if pool else 0,
                "in_use": pool.in_use if pool else 0,
                "utilization": pool.utilization if pool else 0.0,
            }
        )
    return {
        "interval_s": metrics.series.interval,
        "now": time.time(),
        "points": metrics.series.since(since),
        "backends": backends,
        "totals": {
            "requests": metrics.series.totals["requests"],
            "refusals": metrics.series.totals["refusals"],
            "active_streams": len(state.chat.live),
        },
    }


@router.get("/plans")
async def list_plans(_: Admin, state: State) -> dict[str, Any]:
    return {"object": "list", "data": [plan.as_dict() for plan in state.plans.all()]}


@router.put("/plans/{name}")
async def put_plan(name: str, changes: PlanChanges, who: Admin, state: State) -> dict[str, Any]:
    """Change a plan (or create one); the next request on it obeys the change."""
    if not PLAN_NAME.fullmatch(name):
        raise InvalidRequest(
            "Plan names are 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit.",
            param="name",
        )
    values = changes.model_dump(exclude_none=True)
    action = "plan.update" if name in state.plans.names() else "plan.create"
    plan = await state.plans.put(name, values, create=True, audit=who.audit(action, name, values))
    return plan.as_dict()


def _user_json(user: User, usage: UsageTotals | None = None) -> dict[str, Any]:
    now = utcnow()
    row: dict[str, Any] = {
        "id": str(user.id),
        "email": user.email,
        "plan": user.plan,
        "is_admin": user.is_admin,
        "status": user.status(now),
        "disabled_reason": None if user.active(now) else user.disabled_reason,
        "disabled_until": user.disabled_until.isoformat()
        if user.disabled_until and not user.active(now)
        else None,
        "created_at": user.created_at.isoformat(),
    }
    if usage is not None:
        row["tokens_24h"] = usage.total_tokens
        row["requests_24h"] = usage.requests
    return row


@router.get("/users")
async def list_users(
    _: Admin,
    state: State,
    q: str = Query(default="", max_length=320),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    """Users whose email contains ``q`` (or on the plan ``q``), newest first, with their last
    24 hours of usage and the abuse scores' temporary ban (their ``status`` stays "active"
    while the ban refuses them). ``offset`` skips that many for the next page; ``has_more``
    says whether there is one, so older accounts are not silently cut off."""
    since = utcnow() - timedelta(hours=24)
    async with state.db.transaction() as session:
        found = await Reports(session).users(q.strip(), limit + 1, since, offset=offset)
    return {
        "data": [
            {**_user_json(user, usage), "temporary_ban": _temporary_ban(state, user)}
            for user, usage in found[:limit]
        ],
        "has_more": len(found) > limit,
    }


@router.get("/users/{email}")
async def get_user(email: str, _: Admin, state: State) -> dict[str, Any]:
    now = utcnow()
    async with state.db.transaction() as session:
        user = await Accounts(session).user_by_email(email.strip().lower())
        if user is None:
            raise NotFound(f"no user with email {email}", param="email")
        reports = Reports(session)
        recent = await reports.usage_of(user.id, now - timedelta(hours=24))
        keys = await reports.keys(user.id)
        days = await reports.daily(user.id, 14, now.date())
    return {
        "user": {**_user_json(user, recent), "temporary_ban": _temporary_ban(state, user)},
        "keys": [
            {
                "id": str(key.id),
                "name": key.name,
                "prefix": key.prefix,
                "created_at": key.created_at.isoformat(),
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key in keys
        ],
        "usage": {
            "days": [
                {
                    "day": day.isoformat(),
                    "requests": usage.requests,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                }
                for day, usage in days
            ],
            "total_tokens": sum(usage.total_tokens for _, usage in days),
        },
    }


@router.put("/users/{email}/plan")
async def put_user_plan(email: str, choice: PlanChoice, who: Admin, state: State) -> dict[str, Any]:
    """Move a user to another plan; their next request is served under it."""
    state.plans.require(choice.plan)
    audit = who.audit("user.plan", email, {"plan": choice.plan})
    user = await state.accounts.set_plan(email, choice.plan, audit=audit)
    return _user_json(user)


@router.post("/users/{email}/suspend")
async def suspend_user(email: str, body: Suspension, who: Admin, state: State) -> dict[str, Any]:
    """Lock an account out for ``days`` (or until restored): its keys stop working and its
    browser sessions end."""
    until = utcnow() + timedelta(days=body.days) if body.days else None
    audit = who.audit("user.suspend", email, {"reason": body.reason, "days": body.days})
    user = await state.accounts.suspend(email, body.reason.strip(), until=until, audit=audit)
    return _user_json(user)


@router.post("/users/{email}/ban")
async def ban_user(email: str, body: Ban, who: Admin, state: State) -> dict[str, Any]:
    if email.strip().lower() == who.email:
        raise PermissionDenied("You cannot ban yourself.", param="email")
    audit = who.audit("user.ban", email, {"reason": body.reason})
    user = await state.accounts.suspend(
        email, body.reason.strip(), until=None, banned=True, audit=audit
    )
    return _user_json(user)


def _temporary_ban(state: Services, user: User) -> dict[str, Any] | None:
    """The abuse scores' ban on the user in force on this replica (every replica holds the
    bans any of them started), or None."""
    ban = state.violations.banned(f"user:{user.id}")
    return guard.ban_json(ban, state.violations.clock()) if ban is not None else None


@router.post("/users/{email}/restore")
async def restore_user(
    email: str, who: Admin, state: State, _: Nothing | None = None
) -> dict[str, Any]:
    """Let the user back in: lift a suspension or ban, and the abuse scores' temporary ban
    (with its address's, if banned together) on every replica."""
    audit = who.audit("user.restore", email)
    user = await state.accounts.restore(email, audit=audit)
    lifted = await guard.lift(state, f"user:{user.id}")
    return {**_user_json(user), "temporary_ban": None, "temporary_ban_lifted": bool(lifted)}


@router.delete("/users/{email}", status_code=204)
async def delete_user(email: str, who: Admin, state: State) -> None:
    """Delete an account and all its data; later exports no longer contain it."""
    if email.strip().lower() == who.email:
        raise PermissionDenied("You cannot delete your own account here.", param="email")
    await state.accounts.delete_user(email, audit=who.audit("user.delete", email))


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: uuid.UUID, who: Admin, state: State) -> None:
    await state.accounts.revoke_key(key_id, audit=who.audit("key.revoke", str(key_id)))


class Resolution(Body):
    action: Literal["dismiss", "suspend", "ban"]
    reason: str = Field(min_length=1, max_length=300)
    days: int | None = Field(default=None, ge=1, le=3650)


@router.get("/reports")
async def list_reports(
    _: Admin,
    state: State,
    status: Literal["open", "dismissed", "actioned"] | None = Query(default="open"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """The review queue: what the abuse watch found, with its evidence, newest first."""
    reports = await state.reviews.recent(status, limit)
    return {
        "data": [
            {
                "id": report.id,
                "created_at": report.created_at.isoformat(),
                "kind": report.kind,
                "subject": report.subject,
                "response": report.response,
                "evidence": report.evidence,
                "status": report.status,
                "resolution": report.resolution,
                "resolved_by": report.resolved_by,
            }
            for report in reports
        ]
    }


@router.post("/reports/{report_id}/resolve")
async def resolve_report(
    report_id: Annotated[int, FastPath(ge=1, le=MAX_ID)],
    body: Resolution,
    who: Admin,
    state: State,
) -> dict[str, Any]:
    """One click: dismiss, or suspend (for ``days``, or until restored) or ban every account
    the report's evidence names."""
    audit = who.audit(f"report.{body.action}", str(report_id), {"reason": body.reason})
    report = await state.reviews.resolve(report_id, body.action, body.reason, body.days, audit)
    return {"id": report.id, "status": report.status, "resolution": report.resolution}


@router.get("/audit")
async def audit_log(
    _: Admin,
    state: State,
    limit: int = Query(default=100, ge=1, le=1000),
    before: int | None = Query(default=None, ge=1, le=MAX_ID),
) -> dict[str, Any]:
    """Admin actions, newest first (``before`` pages back from an entry id)."""
    async with state.db.transaction() as session:
        entries = await AuditLog(session).recent(limit, before)
    return {
        "data": [
            {
                "id": entry.id,
                "at": entry.at.isoformat(),
                "actor": entry.actor_email,
                "action": entry.action,
                "target": entry.target,
                "details": entry.details,
            }
            for entry in entries
        ]
    }


@router.get("/usage")
async def usage(
    _: Admin,
    state: State,
    hours: int = Query(default=24, ge=1, le=24 * 90),
    plan: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=20, ge=1, le=200),
) -> dict[str, Any]:
    """Who used what over the last ``hours``: per plan, and the heaviest users (on ``plan``,
    when given)."""
    since = utcnow() - timedelta(hours=hours)
    async with state.db.transaction() as session:
        reports = Reports(session)
        plans = await reports.by_plan(since)
        top = await reports.top_users(since, limit, plan)
    return {
        "hours": hours,
        "plan": plan,
        "by_plan": [
            {
                "plan": plan,
                "requests": totals.requests,
                "prompt_tokens": totals.prompt_tokens,
                "completion_tokens": totals.completion_tokens,
                "users": users,
            }
            for plan, totals, users in plans
        ],
        "top_users": [
            {
                "email": user.email,
                "plan": user.plan,
                "requests": totals.requests,
                "prompt_tokens": totals.prompt_tokens,
                "completion_tokens": totals.completion_tokens,
                "total_tokens": totals.total_tokens,
            }
            for user, totals in top
        ],
    }


@router.get("/flywheel")
async def flywheel(_: Admin, state: State) -> dict[str, Any]:
    """Feedback volume, consent, rater trust, credits and the top of the leaderboard."""
    async with state.db.transaction() as session:
        feedback = await Reports(session).feedback(7, utcnow().date())
    last = feedback.pop("last_days")
    figures = await board.figures(state.db, state.credits, state.settings.training_consent_default)
    top = await board.standings(state.db, rounds=200)
    return {
        "feedback": {**feedback, "last_7_days": last},
        **figures,
        "leaderboard": top if top["votes"] else None,
        "exports": await board.exports(state.db),
    }


@router.get("/leaderboard")
async def leaderboard(
    _: Admin,
    state: State,
    rounds: int = Query(default=1000, ge=10, le=10_000),
    since: datetime | None = None,
) -> dict[str, Any]:
    """Models ranked by side-by-side votes: Bradley-Terry scores on the Elo scale with
    bootstrap 95% intervals, fitted without the voters the bad-voter check flags (listed)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return await board.standings(state.db, rounds=rounds, since=since)


@router.post("/credits/review")
async def review_credits(_: Admin, state: State) -> dict[str, Any]:
    """Estimate rater trust now and claw back credits that should not stand (the server also
    does this every few minutes)."""
    report = await state.credits.review()
    return {
        "raters": report.raters,
        "checked": report.checked,
        "untrusted": [str(user) for user in report.untrusted],
        "clawed_back": dict(report.clawed_back),
        "puppet_groups": report.groups,
    }
