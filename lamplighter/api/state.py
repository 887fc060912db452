"""What the app holds while it runs, built by the lifespan and read by the routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from lamplighter.abuse.reports import ReviewQueue
from lamplighter.abuse.violations import Violations
from lamplighter.abuse.watch import Watch
from lamplighter.accounts import AccountService
from lamplighter.billing.service import Billing
from lamplighter.chat import ChatService
from lamplighter.engines.router import Router
from lamplighter.flywheel.credits import Credits
from lamplighter.flywheel.feedback import Feedback
from lamplighter.flywheel.preferences import Preferences
from lamplighter.settings import Settings
from lamplighter.store.database import Database
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.ratelimits import RateLimiter
from lamplighter.web.auth import WebAuth

if TYPE_CHECKING:
    from lamplighter.drain import Drain
    from lamplighter.reload import Reloader
    from lamplighter.traffic.bulletin import Bulletin
    from lamplighter.traffic.redis_state import RedisState


@dataclass
class Services:
    settings: Settings
    db: Database
    router: Router
    accounts: AccountService
    plans: PlanBook
    limiter: RateLimiter
    chat: ChatService
    web: WebAuth
    violations: Violations
    watch: Watch
    reviews: ReviewQueue
    feedback: Feedback
    credits: Credits
    preferences: Preferences
    billing: Billing
    drain: Drain | None = None  # the shutdown sequence (drain.py)
    reloader: Reloader | None = None  # live configuration reloads (reload.py)
    # What one replica tells the others (a background response to cancel, wherever it runs).
    bulletin: Bulletin | None = None
    redis: RedisState | None = None  # the limiters' shared state, when Redis is configured

    def models_for(self, plan_name: str) -> list[str]:
        """The models a plan may use: its own ``models`` list allows them, and a backend that
        takes the plan's requests serves them (a backend's ``plans`` may leave it out)."""
        plan = self.plans.get(plan_name)
        return [model for model in self.router.models_for(plan_name) if plan.allows(model)]


async def services(request: Request) -> Services:
    # async: FastAPI runs a plain function dependency in a worker thread, on every request.
    found: Services = request.app.state.services
    return found


State = Annotated[Services, Depends(services)]
