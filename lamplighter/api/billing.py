"""Billing over HTTP: a person's plan and subscription (``/api/billing``), Stripe's webhook
(``/api/billing/stripe/webhook``), and the admin side (``/api/admin/billing``,
``/api/admin/teams``): grants, teams and statements. Routes parse and call ``Billing``
(billing/service.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field, model_validator

from lamplighter.api.admin import Admin
from lamplighter.api.openai import principal, require_scope
from lamplighter.api.schemas import Body
from lamplighter.api.state import Services, State
from lamplighter.billing import statements
from lamplighter.billing.service import subscription_json
from lamplighter.billing.subscriptions import add_period
from lamplighter.chat import Principal
from lamplighter.exceptions import InvalidRequest
from lamplighter.store.models import utcnow
from lamplighter.web.session import UNSAFE, api_visitor

router = APIRouter(prefix="/api/billing")
admin_router = APIRouter(prefix="/api/admin")


async def member(request: Request, state: State) -> Principal:
    """The caller: an API key's owner, or the logged-in visitor (whose state-changing calls
    carry the CSRF token). A key that may not chat (one made for feedback only) may not spend
    money either."""
    if request.headers.get("authorization"):
        who = await principal(request, state)
        if request.method in UNSAFE:
            require_scope(who, "chat")
        return who
    return (await api_visitor(request, state)).principal


Member = Annotated[Principal, Depends(member)]


class CheckoutBody(Body):
    plan: str = Field(min_length=1, max_length=64)
    period: Literal["month", "year"] = "month"
    # Subscribe a team one owns instead of oneself, for this many seats (default: its members).
    team: str | None = Field(default=None, min_length=1, max_length=64)
    seats: int | None = Field(default=None, ge=1, le=100_000)


class PlanBody(Body):
    """Another plan, or (for a team) another number of seats: one of the two at a time."""

    plan: str | None = Field(default=None, min_length=1, max_length=64)
    team: str | None = Field(default=None, min_length=1, max_length=64)
    seats: int | None = Field(default=None, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_change(self) -> PlanBody:
        if self.plan is not None and self.seats is not None:
            raise ValueError("give plan or seats, not both")
        return self


class TeamChoice(Body):
    team: str | None = Field(default=None, min_length=1, max_length=64)


@router.get("")
async def overview(who: Member, state: State) -> dict[str, Any]:
    """The caller's plan, subscription and team, and the plans on sale."""
    return await state.billing.overview(who)


@router.post("/checkout")
async def checkout(
    body: CheckoutBody, who: Member, state: State, request: Request
) -> dict[str, Any]:
    """A Stripe Checkout session to subscribe; send the person to its ``url``. Stripe sends
    them back to the public address (``_back``)."""
    session = await state.billing.checkout(
        who,
        plan=body.plan,
        period=body.period,
        team=body.team,
        seats=body.seats,
        success_url=_back(state, request, "success"),
        cancel_url=_back(state, request, "canceled"),
    )
    return {"id": session.id, "url": session.url}


@router.post("/portal")
async def portal(body: TeamChoice, who: Member, state: State, request: Request) -> dict[str, str]:
    """Stripe's customer portal, to pay what is due (an unpaid subscription), change the card
    or read invoices; send the person to its ``url``. It sends them back to the public address,
    as Checkout does."""
    back = _back(state, request, "portal")
    return {"url": await state.billing.portal(who, return_url=back, team=body.team)}


def _back(state: Services, request: Request, outcome: str) -> str:
    """Where Stripe sends the person back to: the public address (behind a proxy the request's
    own is an internal one, and its Host header is whatever the caller wrote)."""
    base = state.settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/?billing={outcome}"


@router.post("/plan")
async def change_plan(body: PlanBody, who: Member, state: State) -> dict[str, Any]:
    """Move the subscription to another plan (up at once, down at the end of the period), or
    change a team subscription's seats (at once, prorated)."""
    if body.seats is not None:
        row = await state.billing.change_seats(who, body.seats, team=body.team)
    elif body.plan is not None:
        row = await state.billing.change_plan(who, body.plan, team=body.team)
    else:
        raise InvalidRequest("Give the plan to move to, or a team's seats.", param="plan")
    return subscription_json(row)


@router.post("/cancel")
async def cancel(body: TeamChoice, who: Member, state: State) -> dict[str, Any]:
    """Cancel at the end of the period; the plan stays until then."""
    return subscription_json(await state.billing.cancel(who, team=body.team))


@router.post("/resume")
async def resume(body: TeamChoice, who: Member, state: State) -> dict[str, Any]:
    """Take back a cancellation before the period ends."""
    return subscription_json(await state.billing.resume(who, team=body.team))


@router.post("/stripe/webhook", include_in_schema=False)
async def stripe_webhook(request: Request, state: State) -> dict[str, Any]:
    """Stripe's events, verified against ``Stripe-Signature``. Any 2xx tells Stripe the event
    arrived; a duplicate or an event of no interest is acknowledged too, or Stripe would send
    it again for days."""
    payload = await request.body()
    outcome = await state.billing.stripe_event(payload, request.headers.get("stripe-signature"))
    return {"received": True, "outcome": outcome}


# --- Admin -------------------------------------------------------------------------------------


class GrantBody(Body):
    """Grant ``plan`` to a user (``email``) or a ``team`` until ``until``, or for ``days`` or
    ``months`` from now."""

    email: str | None = Field(default=None, min_length=3, max_length=320)
    team: str | None = Field(default=None, min_length=1, max_length=64)
    plan: str = Field(min_length=1, max_length=64)
    until: datetime | None = None
    days: int | None = Field(default=None, ge=1, le=3660)
    months: int | None = Field(default=None, ge=1, le=120)
    seats: int = Field(default=1, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_end(self) -> GrantBody:
        if sum(x is not None for x in (self.until, self.days, self.months)) != 1:
            raise ValueError("give exactly one of until, days or months")
        if (self.email is None) == (self.team is None):
            raise ValueError("give exactly one of email or team")
        return self

    def end(self) -> datetime:
        now = utcnow()
        if self.until is not None:
            return self.until if self.until.tzinfo else self.until.replace(tzinfo=UTC)
        if self.days is not None:
            return now + timedelta(days=self.days)
        assert self.months is not None
        return add_period(now, "month", self.months)


class SubjectBody(Body):
    email: str | None = Field(default=None, min_length=3, max_length=320)
    team: str | None = Field(default=None, min_length=1, max_length=64)


class TeamBody(Body):
    name: str = Field(min_length=1, max_length=64)
    owner: str | None = Field(default=None, min_length=3, max_length=320)


@admin_router.post("/billing/grants")
async def grant(body: GrantBody, who: Admin, state: State) -> dict[str, Any]:
    """The manual provider: a plan for a period, invoiced outside Lamplighter. It applies to
    the next request at once; at its end the subject falls to the free plan."""
    until = body.end()
    target = body.email or body.team or ""
    details = {"plan": body.plan, "until": until.isoformat(), "seats": body.seats}
    row = await state.billing.grant(
        plan=body.plan,
        until=until,
        email=body.email,
        team=body.team,
        seats=body.seats,
        audit=who.audit("billing.grant", target, details),
    )
    return subscription_json(row)


@admin_router.post("/billing/end")
async def end(body: SubjectBody, who: Admin, state: State) -> dict[str, Any]:
    """End a user's or team's subscription now."""
    target = body.email or body.team or ""
    row = await state.billing.end(
        email=body.email, team=body.team, audit=who.audit("billing.end", target)
    )
    return subscription_json(row)


class CSVResponse(StreamingResponse):
    media_type = "text/csv"


@admin_router.get("/billing/statement", response_class=CSVResponse)
async def statement(
    _: Admin,
    state: State,
    period: str = Query(max_length=7, description="The month, YYYY-MM."),
    team: str | None = Query(default=None, max_length=64),
) -> CSVResponse:
    """Usage per user and plan in a month, with the plan's price, as CSV."""
    when = statements.period(period)
    team_id = await statements.team_id(state.db, team)
    rows = statements.rows(state.db, state.plans, when, team_id)
    suffix = f"-{team}" if team else ""
    return CSVResponse(
        statements.csv_stream(rows),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="statement-{when.name}{suffix}.csv"'
        },
    )


@admin_router.get("/teams")
async def list_teams(_: Admin, state: State) -> dict[str, Any]:
    return {"data": await state.billing.teams()}


@admin_router.post("/teams")
async def create_team(body: TeamBody, who: Admin, state: State) -> dict[str, Any]:
    """A team; its owner (who joins it first) may buy and change its subscription."""
    audit = who.audit("team.create", body.name, {"owner": body.owner})
    team = await state.billing.create_team(body.name, body.owner, audit=audit)
    return await state.billing.team(team.name)


@admin_router.get("/teams/{name}")
async def get_team(name: str, _: Admin, state: State) -> dict[str, Any]:
    return await state.billing.team(name)


@admin_router.put("/teams/{name}/members/{email}")
async def add_member(name: str, email: str, who: Admin, state: State) -> dict[str, Any]:
    """Add a member; with a subscription, only while a seat is free."""
    audit = who.audit("team.add", name, {"email": email})
    await state.billing.add_member(name, email, audit=audit)
    return await state.billing.team(name)


@admin_router.delete("/teams/{name}/members/{email}")
async def remove_member(name: str, email: str, who: Admin, state: State) -> dict[str, Any]:
    audit = who.audit("team.remove", name, {"email": email})
    await state.billing.remove_member(name, email, audit=audit)
    return await state.billing.team(name)
