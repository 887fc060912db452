"""The admin API: plans and users' plans, changed live. Anyone but an admin gets 404, so the
API's existence is not disclosed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lamplighter.api.openai import principal
from lamplighter.api.state import State
from lamplighter.chat import Principal
from lamplighter.exceptions import NotFound

router = APIRouter(prefix="/api/admin")


async def admin(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.is_admin:
        raise NotFound(
            f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"
        )
    return who


Admin = Annotated[Principal, Depends(admin)]


class PlanChanges(BaseModel):
    """Fields of a plan to change; those left out keep their value."""

    model_config = ConfigDict(extra="forbid")
    priority: int | None = Field(default=None, ge=0, le=100)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    concurrent_streams: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    models: list[str] | None = None
    queue_patience_s: float | None = Field(default=None, ge=0, le=3600)
    ttft_slo_s: float | None = Field(default=None, gt=0, le=3600)
    cache_ttl_s: float | None = Field(default=None, ge=0, le=86400)


class PlanChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: str = Field(min_length=1, max_length=64)


@router.get("/plans")
async def list_plans(_: Admin, state: State) -> dict[str, Any]:
    return {"object": "list", "data": [plan.as_dict() for plan in state.plans.all()]}


@router.put("/plans/{name}")
async def put_plan(name: str, changes: PlanChanges, _: Admin, state: State) -> dict[str, Any]:
    """Change a plan (or create one); the next request on it obeys the change."""
    plan = await state.plans.put(name, changes.model_dump(exclude_none=True), create=True)
    return plan.as_dict()


@router.put("/users/{email}/plan")
async def put_user_plan(email: str, choice: PlanChoice, _: Admin, state: State) -> dict[str, Any]:
    """Move a user to another plan; their next request is served under it."""
    state.plans.require(choice.plan)
    user = await state.accounts.set_plan(email, choice.plan)
    return {"email": user.email, "plan": user.plan}
