"""Where requests meet the violation scores: refusals are counted against the caller's user and
address, and a banned caller is turned away (403 with the ban's end) before anything else."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from starlette.requests import Request

from lamplighter.api.middleware import arrived
from lamplighter.api.state import Services
from lamplighter.chat import Principal
from lamplighter.exceptions import APIError, Banned


def address(request: Request) -> str:
    """The client's address (uvicorn puts a trusted proxy's X-Forwarded-For here)."""
    return request.client.host if request.client else "unknown"


def subjects(request: Request, who: Principal | None = None) -> tuple[str, ...]:
    found = (f"ip:{address(request)}",)
    return (f"user:{who.user_id}", *found) if who is not None else found


def refuse_banned(state: Services, *of: str) -> None:
    ban = state.violations.banned(*of)
    if ban is None:
        return
    wait = max(0.0, ban.until - state.violations.clock())
    until = datetime.fromtimestamp(ban.until, UTC).isoformat(timespec="seconds")
    minutes = math.ceil(wait / 60)
    raise Banned(
        f"Access is suspended until {until} (about {minutes} min) after repeated violations "
        f"(most recently: {ban.reason.replace('_', ' ')}). Repeated bans last longer.",
        retry_after=wait,
    )


def count(state: Services, error: APIError, *of: str) -> None:
    """Count a refusal against ``of`` when it is the kind that abuse is made of (and, if it
    says when to come back, the request arrived after an earlier refusal was sent and before
    the time it named)."""
    if error.violation is not None:
        state.chat.metrics.violations.labels(error.violation).inc()
        retry_after = getattr(error, "retry_after", None)
        state.violations.record(
            error.violation, *of, retry_after=retry_after, arrived=arrived.get()
        )


async def watch_prompt(state: Services, who: Principal, question: str) -> None:
    """Feed a question to the abuse watch: floods count against every account in them, and
    every finding goes to the review queue."""
    findings = state.watch.prompt(str(who.user_id), question)
    for finding in findings:
        state.chat.metrics.findings.labels(finding.kind).inc()
        if finding.kind == "prompt_flood":
            accounts = finding.evidence.get("accounts", [])
            state.violations.record("flood", *(f"user:{account}" for account in accounts))
    await state.reviews.file(findings)
