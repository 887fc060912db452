"""``POST /api/feedback``: ratings, regeneration verdicts and corrections over the API, with an
API key that has the feedback scope."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lamplighter.api.guard import address
from lamplighter.api.openai import principal, require_scope
from lamplighter.api.state import State
from lamplighter.chat import completion_id, message_id_from
from lamplighter.exceptions import NotFound
from lamplighter.flywheel.credits import origin_of
from lamplighter.flywheel.feedback import FeedbackBody

router = APIRouter(prefix="/api")


@router.post("/feedback")
async def feedback(body: FeedbackBody, request: Request, state: State) -> dict[str, Any]:
    """Feedback on one of the caller's completions, named by its id (``chatcmpl-...``):

    - ``rating``: thumbs up (1) or down (-1), with optional reasons and comment; rating again
      replaces it;
    - ``verdict``: for a regenerated completion, "better", "worse" or "same" as the one before;
    - ``correction``: the caller's improved version of the completion (a preference pair).

    Another user's completion is a 404, like one that does not exist."""
    who = await principal(request, state)
    require_scope(who, "feedback")
    message_id = message_id_from(body.message_id)
    if message_id is None:
        raise NotFound("There is no such message.", param="message_id", code="message_not_found")
    origin = origin_of(address(request))
    if body.verdict is not None:
        compared = await state.preferences.verdict(who, message_id, body.verdict, origin)
        return {"message_id": body.message_id, "comparison": compared}
    if body.correction is not None:
        rewrite, compared = await state.preferences.correct(
            who, message_id, body.correction, origin
        )
        return {
            "message_id": body.message_id,
            "correction_id": completion_id(rewrite.id),
            "comparison": compared,
        }
    assert body.rating is not None
    rated = await state.feedback.rate(
        who, message_id, body.rating, body.reasons, body.comment, origin
    )
    return {"message_id": body.message_id, **rated}
