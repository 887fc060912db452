"""Where requests meet the violation scores: refusals are counted against the caller's user and
address, and a banned caller is turned away (403 with the ban's end) before anything else.

Scores and bans live in each replica's memory. A ban that starts on one replica is announced on
the bulletin (topic ``ban``) and held by every replica that hears it, so a client cannot get
round it through the load balancer, and an operator sees it wherever the console's request
lands; an operator's restore lifts it on every replica (``ban.lift``).
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from lamplighter.abuse.violations import Ban
from lamplighter.api.middleware import ACCESS_PLAN, arrived
from lamplighter.api.state import Services
from lamplighter.chat import Principal
from lamplighter.exceptions import APIError, Banned
from lamplighter.traffic.bulletin import Bulletin

# The caller whose subjects were last taken in this request: its plan labels a ban's refusal,
# its email goes into a ban's log line.
_caller: ContextVar[Principal | None] = ContextVar("caller", default=None)
# Announcements on their way (a task is only weakly held by the loop).
_announcing: set[asyncio.Task[None]] = set()


def address(request: Request) -> str:
    """The client's address (uvicorn puts a trusted proxy's X-Forwarded-For here)."""
    return request.client.host if request.client else "unknown"


def subjects(request: Request, who: Principal | None = None) -> tuple[str, ...]:
    """The caller's subjects (``user:<id>``, ``ip:<address>``); its plan goes on the request's
    access log line."""
    _caller.set(who)
    found = (f"ip:{address(request)}",)
    if who is None:
        return found
    setattr(request.state, ACCESS_PLAN, who.plan)
    return (f"user:{who.user_id}", *found)


def wait_text(seconds: float) -> str:
    """A wait as a person reads it: seconds below a minute, then minutes, then hours."""
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 3600:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def refuse_banned(state: Services, *of: str) -> None:
    ban = state.violations.banned(*of)
    if ban is None:
        return
    wait = max(0.0, ban.until - state.violations.clock())
    until = datetime.fromtimestamp(ban.until, UTC).isoformat(timespec="seconds")
    who = _caller.get()
    state.chat.metrics.refused(who.plan if who is not None else "unknown", Banned.code)
    raise Banned(
        f"Access is suspended until {until} (about {wait_text(wait)}) after repeated "
        f"violations (most recently: {ban.reason.replace('_', ' ')}). Repeated bans last longer.",
        retry_after=wait,
    )


def count(state: Services, error: APIError, *of: str) -> None:
    """Count a refusal against ``of`` when it is the kind that abuse is made of (and, if it
    says when to come back, the request arrived after an earlier refusal was sent and before
    the time it named)."""
    if error.violation is not None:
        state.chat.metrics.violations.labels(error.violation).inc()
        retry_after = getattr(error, "retry_after", None)
        who = _caller.get()
        started = state.violations.record(
            error.violation,
            *of,
            retry_after=retry_after,
            arrived=arrived.get(),
            email=who.email if who is not None else None,
        )
        announce(state, started)


async def watch_prompt(state: Services, who: Principal, question: str) -> None:
    """Feed a question to the abuse watch: floods count against every account in them, and
    every finding goes to the review queue."""
    findings = state.watch.prompt(str(who.user_id), question)
    for finding in findings:
        state.chat.metrics.findings.labels(finding.kind).inc()
        if finding.kind == "prompt_flood":
            accounts = finding.evidence.get("accounts", [])
            started = state.violations.record("flood", *(f"user:{a}" for a in accounts))
            announce(state, started)
    await state.reviews.file(findings)


def ban_json(ban: Ban, now: float) -> dict[str, Any]:
    """A ban as the admin API shows it."""
    return {
        "until": datetime.fromtimestamp(ban.until, UTC).isoformat(timespec="seconds"),
        "seconds_left": round(max(0.0, ban.until - now), 1),
        "reason": ban.reason,
        "repeat": ban.repeat,
    }


def announce(state: Services, bans: list[Ban]) -> None:
    """Tell the other replicas about bans that started here, and pin them for those that start
    later or do not hear it (see ``listen``)."""
    bulletin = state.bulletin
    if bulletin is None:
        return
    for ban in bans:
        task = asyncio.get_running_loop().create_task(_tell(bulletin, ban))
        _announcing.add(task)
        task.add_done_callback(_announcing.discard)


async def _tell(bulletin: Bulletin, ban: Ban) -> None:
    await bulletin.pin("ban", ban.subject, **asdict(ban))


async def lift(state: Services, *of: str) -> list[Ban]:
    """End the bans of ``of`` (and of the subjects banned with them) here and on every other
    replica; the bans that were in force here."""
    lifted = state.violations.lift(*of)
    if state.bulletin is not None:
        await lift_elsewhere(state.bulletin, *of, *(s for ban in lifted for s in ban.together))
    return lifted


async def lift_elsewhere(bulletin: Bulletin, *of: str) -> bool:
    """End the bans of ``of`` (and of the subjects banned with them) on every other replica,
    and take back their pinned notices; whether Redis could be told now (if not, a running
    replica tells it when Redis is back)."""
    ended = set(of)
    pinned = await _pinned_bans(bulletin)
    return await bulletin.unpin(
        "ban", *ended, *(ban.subject for ban in pinned if ended & {ban.subject, *ban.together})
    )


def _ban(notice: dict[str, Any]) -> Ban | None:
    """A ban as the bulletin carries it (None if it is not one)."""
    try:
        return Ban(
            subject=str(notice["subject"]),
            until=float(notice["until"]),
            seconds=float(notice["seconds"]),
            repeat=int(notice["repeat"]),
            reason=str(notice["reason"]),
            together=tuple(str(s) for s in notice.get("together", ())),
        )
    except (KeyError, TypeError, ValueError):
        return None


async def _pinned_bans(bulletin: Bulletin) -> list[Ban]:
    """The bans pinned on the bulletin, in force (none if Redis cannot be reached)."""
    return [ban for ban in map(_ban, await bulletin.pinned("ban") or []) if ban is not None]


async def listen(state: Services) -> None:
    """Hold the bans in force on other replicas, and hear those they start and lift from now
    on (the server calls it once, at start).

    After the bulletin was out of reach, the pinned bans are the truth: those pinned meanwhile
    are taken up, and those held here but no longer pinned were lifted elsewhere meanwhile and
    end here too (bans started or lifted here meanwhile were owed to the bulletin, which posted
    them first). Unless Redis itself restarted meanwhile: its pins may be gone with it, so the
    bans held here are pinned again, and a lift that reached Redis before them is undone."""
    bulletin = state.bulletin
    if bulletin is None:
        return

    async def banned(message: dict[str, Any]) -> None:
        ban = _ban(message)
        if ban is not None:
            state.violations.impose(ban)

    async def lifted(message: dict[str, Any]) -> None:
        # "subjects": a replica of an earlier release, during a rolling upgrade.
        state.violations.lift(*(str(s) for s in message.get("keys", message.get("subjects", ()))))

    async def catch_up() -> None:
        notices = await bulletin.pinned("ban")
        if notices is None:
            return  # out of reach again: the next subscription catches up
        bans = [ban for ban in map(_ban, notices) if ban is not None]
        pinned = {ban.subject for ban in bans}
        held = [ban for ban in state.violations.bans() if ban.subject not in pinned]
        if bulletin.restarted:
            for ban in held:
                await _tell(bulletin, ban)
        else:
            owed = bulletin.owed("ban")
            state.violations.lift(*(ban.subject for ban in held if ban.subject not in owed))
        for ban in bans:
            state.violations.impose(ban)

    bulletin.on("ban", banned, resync=catch_up)
    bulletin.on("ban.lift", lifted)
    for ban in await _pinned_bans(bulletin):
        state.violations.impose(ban)
