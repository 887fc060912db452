"""Thumbs up or down on answers, from the web chat and the API alike, and each person's
training consent."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lamplighter.api.schemas import Body
from lamplighter.chat import Principal
from lamplighter.exceptions import InvalidRequest, NotFound
from lamplighter.store.conversations import Conversations
from lamplighter.store.database import Database
from lamplighter.store.models import Deletion, Message, Rating, User, utcnow
from lamplighter.store.web import WebStore
from lamplighter.telemetry.metrics import Metrics

if TYPE_CHECKING:  # credits.py asks this module who consents
    from lamplighter.flywheel.credits import Credits

# What a thumbs-down can say was wrong, and what a thumbs-up can say was good. The ids differ
# (other, other_good), so that counts per reason keep complaints and praise apart.
RATING_REASONS: dict[int, dict[str, str]] = {
    -1: {
        "not_factual": "Not factual",
        "did_not_follow_instructions": "Didn't follow instructions",
        "unsafe": "Unsafe",
        "too_long": "Too long",
        "other": "Other",
    },
    1: {
        "accurate": "Accurate",
        "helpful": "Helpful",
        "well_written": "Clear and well written",
        "other_good": "Other",
    },
}


class RatingBody(Body):
    rating: Literal[1, -1]
    reasons: list[str] = Field(default_factory=list, max_length=8)
    comment: str | None = Field(default=None, max_length=2000)

    @field_validator("reasons")
    @classmethod
    def _reasons(cls, reasons: list[str], info: ValidationInfo) -> list[str]:
        """The rating's own reasons only (none without a rating), each once, in list order."""
        rating: int | None = info.data.get("rating")
        allowed = list(RATING_REASONS[rating]) if rating is not None else []
        wrong = sorted(set(reasons) - set(allowed))
        if wrong:
            direction = {1: "a thumbs-up", -1: "a thumbs-down"}.get(rating or 0, "no rating")
            use = f"; use {', '.join(allowed)}" if allowed else ""
            raise ValueError(f"{', '.join(wrong)} is not a reason for {direction}{use}")
        return sorted(set(reasons), key=allowed.index)


class FeedbackBody(RatingBody):
    """``POST /api/feedback`` on the completion ``message_id`` names: exactly one of a rating
    (with its reasons and comment), a regeneration verdict, or a correction."""

    message_id: str = Field(min_length=1, max_length=100)
    rating: Literal[1, -1] | None = None  # type: ignore[assignment]
    verdict: Literal["better", "worse", "same"] | None = None
    correction: str | None = Field(default=None, min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _one_signal(self) -> FeedbackBody:
        given = [self.rating is not None, self.verdict is not None, self.correction is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of rating, verdict or correction")
        return self


def consents(choice: bool | None, default: bool) -> bool:
    """Whether a person's chats may be trained on: their own choice, or the organisation's
    default when they made none."""
    return default if choice is None else choice


def rating_json(rating: Rating | None) -> dict[str, Any] | None:
    if rating is None:
        return None
    return {"rating": rating.rating, "reasons": list(rating.reasons), "comment": rating.comment}


class Feedback:
    def __init__(
        self, db: Database, metrics: Metrics, consent_default: bool, credits: Credits
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.consent_default = consent_default
        self.credits = credits

    @staticmethod
    async def _answer(
        conversations: Conversations, who: Principal, message_id: uuid.UUID
    ) -> Message:
        message = await conversations.message_of(who.user_id, message_id)
        if message is None:
            raise NotFound("There is no such message.", code="message_not_found")
        if message.role != "assistant":
            raise InvalidRequest("Only answers can be rated.", param="message_id")
        return message

    async def rate(
        self,
        who: Principal,
        message_id: uuid.UUID,
        rating: int,
        reasons: Sequence[str],
        comment: str | None,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """Rate an answer of the caller's own (404 otherwise); rating again replaces it. The
        first rating of an answer is judged for credits (see ``credits.py``)."""
        now = utcnow()
        comment = (comment or "").strip() or None
        async with self.db.transaction() as session:
            answer = await self._answer(Conversations(session), who, message_id)
            store = WebStore(session)
            row = await store.rating(message_id)
            if row is None:
                row = Rating(
                    message_id=message_id,
                    user_id=who.user_id,
                    rating=rating,
                    reasons=list(reasons),
                    comment=comment,
                    created_at=now,
                    updated_at=now,
                    origin=origin,
                )
                await store.add_rating(row)
            else:
                row.rating, row.reasons, row.comment = rating, list(reasons), comment
                row.updated_at, row.origin = now, origin or row.origin
            if answer.author is None and answer.status == "complete":
                await self.credits.judge(
                    session, who.user_id, "rating", message_id, answer.updated_at, now
                )
            result = rating_json(row)
        assert result is not None
        self.metrics.feedback.labels("thumbs_up" if rating == 1 else "thumbs_down").inc()
        return result

    async def unrate(self, who: Principal, message_id: uuid.UUID) -> None:
        """Remove the caller's rating of an answer (404 if not theirs). The removal is logged
        by id, as deletions are, so that incremental exports withdraw the rows the rating made
        (its KTO row, the DPO pairs it took part in) from copies made earlier; the credit it
        earned is clawed back."""
        now = utcnow()
        async with self.db.transaction() as session:
            await self._answer(Conversations(session), who, message_id)
            store = WebStore(session)
            if await store.rating(message_id) is not None:
                await store.delete_rating(message_id)
                session.add(Deletion(at=now, kind="rating", subject_id=message_id))
                await self.credits.take_back(session, "rating", message_id, "rating_removed", now)

    async def consent(self, who: Principal) -> dict[str, Any]:
        async with self.db.transaction() as session:
            user = await session.get(User, who.user_id)
            assert user is not None
            return self._consent_json(user.training_consent)

    async def set_consent(self, who: Principal, use_for_training: bool | None) -> dict[str, Any]:
        """Record the person's choice (None: back to the organisation's default). Withdrawing
        it is logged as a deletion, so incremental exports drop their data downstream too."""
        async with self.db.transaction() as session:
            user = await session.get(User, who.user_id)
            assert user is not None
            before = self._effective(user.training_consent)
            user.training_consent = use_for_training
            if before and not self._effective(use_for_training):
                session.add(Deletion(at=utcnow(), kind="user", subject_id=user.id))
            chosen = self._consent_json(use_for_training)
        self.credits.forget(who.user_id)  # the bonus counts only while consent stands
        return chosen

    def _effective(self, choice: bool | None) -> bool:
        return consents(choice, self.consent_default)

    def _consent_json(self, choice: bool | None) -> dict[str, Any]:
        return {
            "use_for_training": self._effective(choice),
            "chosen": choice is not None,
            "organisation_default": self.consent_default,
        }
