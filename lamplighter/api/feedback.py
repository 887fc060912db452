"""``POST /api/feedback``: ratings over the API, with an API key that has the feedback scope."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lamplighter.api.openai import principal, require_scope
from lamplighter.api.state import State
from lamplighter.chat import message_id_from
from lamplighter.exceptions import NotFound
from lamplighter.flywheel.feedback import FeedbackBody

router = APIRouter(prefix="/api")


@router.post("/feedback")
async def feedback(body: FeedbackBody, request: Request, state: State) -> dict[str, Any]:
    """Thumbs up (1) or down (-1) on one of the caller's completions, named by its id
    (``chatcmpl-...``), with optional reasons and comment; rating again replaces it. Another
    user's completion is a 404, like one that does not exist."""
    who = await principal(request, state)
    require_scope(who, "feedback")
    message_id = message_id_from(body.message_id)
    if message_id is None:
        raise NotFound("There is no such message.", param="message_id", code="message_not_found")
    rated = await state.feedback.rate(who, message_id, body.rating, body.reasons, body.comment)
    return {"message_id": body.message_id, **rated}
