"""What operators and orchestrators poll: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from lamplighter.api.state import State

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready to serve chat: every model loaded and the database reachable; 503 otherwise, and
    503 "draining" from the moment the server is asked to stop (see drain.py)."""
    checks = {"models": state.router.ready, "database": await state.db.ping()}
    ready = all(checks.values())
    status = "ready" if ready else "not ready"
    if state.drain is not None and state.drain.draining:
        ready, status = False, "draining"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Metrics"}},
)
async def metrics(state: State) -> Response:
    """Prometheus text format; see docs/operations.md for what each metric means."""
    return Response(state.chat.metrics.render(), media_type=CONTENT_TYPE_LATEST)
