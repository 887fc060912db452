"""What operators and orchestrators poll: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from lamplighter import readonly
from lamplighter.api.state import State

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready to serve chat: every model loaded and the database reachable; 503 otherwise, 503
    "draining" from the moment the server is asked to stop (see drain.py), and 503 "moved" for
    good once `lamplighter db copy` has moved the store to another database (readonly.py), so
    that load balancers stop sending it requests it would refuse.

    With Redis, ``checks`` says whether it answers. Failing open (``LAMPLIGHTER_REDIS_FAILURE``)
    a replica serves without it, each enforcing its share of every limit, so it stays ready;
    failing closed it refuses every chat request until Redis answers, so it is not ready."""
    checks = {"models": state.router.ready, "database": await state.db.ping()}
    ready = all(checks.values())
    if state.redis is not None:
        checks["redis"] = await state.redis.check()
        ready = ready and (checks["redis"] or state.redis.failure == "open")
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    settings = state.settings
    if readonly.moved(settings.data_dir, settings.resolved_database_url) is not None:
        ready = False
        body["status"] = "moved"
        body["reason"] = (
            "the store moved to another database (lamplighter db copy): restart this instance "
            "with LAMPLIGHTER_DATABASE_URL set to it"
        )
    if state.drain is not None and state.drain.draining:
        ready, body["status"] = False, "draining"
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Metrics"}},
)
async def metrics(state: State) -> Response:
    """Prometheus text format; see docs/operations.md for what each metric means."""
    return Response(state.chat.metrics.render(), media_type=CONTENT_TYPE_LATEST)
