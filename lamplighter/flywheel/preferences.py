"""Preferences between two answers to one question: the pairs DPO learns from and the votes the
leaderboard is fitted to.

- Regeneration verdicts: after a regeneration the page sometimes asks whether the new answer is
  better, worse or the same as the one it replaced (``verdict_rate`` of regenerations, decided by
  the answer's id so every replica asks about the same ones). An answer of a side-by-side
  takes no verdict: its vote already said which of the two was better.
- Corrections: the person rewrites an answer; the rewrite is stored as a sibling answer written
  by the person, preferred over the original by construction. A rewrite that changes nothing
  but whitespace and punctuation, of the answer or of an earlier rewrite of it, is refused.
- Side-by-side: ``side_by_side_rate`` of new questions get two anonymous answers from two
  variants; the person picks A, B, a tie or both bad, and only then learns which was which.
  As in Chatbot Arena, a vote does not count when an answer was cut or failed, or when an answer
  gave its model away by name.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.api.schemas import Body
from lamplighter.chat import Principal
from lamplighter.conversation.threading import Turn, node_hash
from lamplighter.exceptions import Conflict, InvalidRequest, NotFound
from lamplighter.flywheel.credits import Credits
from lamplighter.flywheel.policy import FlywheelPolicy, Variant
from lamplighter.store.conversations import Conversations
from lamplighter.store.database import Database
from lamplighter.store.models import Comparison, Deletion, Message, new_id, utcnow
from lamplighter.telemetry.metrics import Metrics

# better: the new answer (B) wins; worse: the old one (A) does.
VERDICTS = {"better": "b", "worse": "a", "same": "tie"}
# Names that give a model away; a side-by-side answer containing one (or its own model's name)
# makes the vote not count.
KNOWN_MODELS = (
    "chatgpt", "openai", "gpt-3", "gpt-4", "gpt-5", "claude", "anthropic", "gemini", "bard",
    "llama", "mistral", "mixtral", "qwen", "gemma", "smollm", "deepseek", "phi-3", "falcon",
)  # fmt: skip


class VerdictBody(Body):
    verdict: Literal["better", "worse", "same"]


class CorrectionBody(Body):
    content: str = Field(min_length=1, max_length=100_000)


class VoteBody(Body):
    winner: Literal["a", "b", "tie", "both_bad"]


def asks_verdict(answer_id: uuid.UUID, rate: float) -> bool:
    """Whether to ask for a verdict on this regeneration: a fixed draw per answer."""
    draw = int.from_bytes(hashlib.sha256(answer_id.bytes).digest()[:8], "big") / 2**64
    return draw < rate


def leaks_identity(text: str, variants: tuple[str, ...], question: str = "") -> bool:
    """Whether an answer names a model (a known one, or a compared variant) that the question
    did not name first: a vote may then go to the name rather than the answer. An answer that
    repeats a name the person asked about ("is llama better at...") gives nothing away."""
    names = {*KNOWN_MODELS, *(v.split("@")[0].lower() for v in variants)}
    lowered, asked = text.lower(), question.lower()

    def named(name: str, where: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(name)}", where) is not None

    return any(named(name, lowered) and not named(name, asked) for name in names if name)


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """A comparison as its person sees it: a side-by-side's variants only after the vote."""
    hidden = comparison.kind == "side_by_side" and comparison.winner is None
    return {
        "id": str(comparison.id),
        "kind": comparison.kind,
        "question_id": str(comparison.question_id),
        "a_id": str(comparison.a_id),
        "b_id": str(comparison.b_id),
        "winner": comparison.winner,
        "counted": comparison.winner is not None and comparison.discarded is None,
        "discarded": comparison.discarded,
        "a_model": None if hidden else comparison.a_variant,
        "b_model": None if hidden else comparison.b_variant,
    }


class Preferences:
    def __init__(
        self,
        db: Database,
        policy: FlywheelPolicy,
        credits: Credits,
        metrics: Metrics,
        draw: random.Random | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.credits = credits
        self.metrics = metrics
        self._draw = draw or random.Random()

    def side_by_side(self, plan_models: list[str], model: str) -> tuple[Variant, Variant] | None:
        """The two variants to answer a new question with, or None (most of the time)."""
        if (
            self.policy.side_by_side_rate <= 0
            or self._draw.random() >= self.policy.side_by_side_rate
        ):
            return None
        configured = self.policy.side_by_side_variants
        if configured:
            if not all(v.model in plan_models for v in configured):
                return None
            pair = list(configured)
        else:
            others = [m for m in plan_models if m != model]
            if others:
                pair = [Variant(model), Variant(self._draw.choice(others))]
            else:
                pair = [Variant(model, 0.3), Variant(model, 1.0)]
        self._draw.shuffle(pair)
        return pair[0], pair[1]

    async def open_pair(
        self,
        who: Principal,
        conversation_id: uuid.UUID,
        question_id: uuid.UUID,
        answers: tuple[uuid.UUID, uuid.UUID],
        variants: tuple[Variant, Variant],
        origin: str | None,
    ) -> Comparison:
        """Record a side-by-side shown to ``who``, to be voted on."""
        comparison = Comparison(
            user_id=who.user_id,
            conversation_id=conversation_id,
            question_id=question_id,
            a_id=answers[0],
            b_id=answers[1],
            kind="side_by_side",
            a_variant=str(variants[0]),
            b_variant=str(variants[1]),
            origin=origin,
            created_at=utcnow(),
        )
        async with self.db.transaction() as session:
            session.add(comparison)
        return comparison

    async def expect_verdict(
        self, who: Principal, shown: Message, answer_id: uuid.UUID, model: str
    ) -> bool:
        """Remember, when a regeneration is asked about, which answer it replaced on the
        person's screen: that is the one the verdict compares it with. False (nothing to ask)
        when that is one of a side-by-side not voted on yet: the verdict would name its
        model."""
        async with self.db.transaction() as session:
            pair = await _side_by_side_of(session, shown)
            if pair is not None and pair.winner is None:
                return False
            session.add(
                _regeneration(who, shown, _variant(shown, pair), answer_id, utcnow(), model)
            )
        return True

    async def verdict(
        self, who: Principal, answer_id: uuid.UUID, verdict: str, origin: str | None
    ) -> dict[str, Any]:
        """Record whether a regenerated answer is better, worse or the same as the one it
        replaced (the one shown when the person regenerated; over the API, the newest earlier
        answer); saying again changes it. The answer judged is a model's, and one of a
        side-by-side is refused: its vote says which was better, and a verdict on it would make
        a pair of the same two answers as the vote. A comparison with an answer of a
        side-by-side not voted on yet is refused too (it would name its model)."""
        now = utcnow()
        async with self.db.transaction() as session:
            conversations = Conversations(session)
            new = await _answer(conversations, who, answer_id)
            if new.author is not None or new.model is None or new.parent_id is None:
                raise InvalidRequest(
                    "Only a regenerated answer gets a verdict.", param="message_id"
                )
            if await _side_by_side_of(session, new) is not None:
                raise InvalidRequest(
                    "This answer is one of a side-by-side comparison: your vote on the two "
                    "answers says which is better.",
                    param="message_id",
                    code="side_by_side_answer",
                )
            comparison = await session.scalar(
                select(Comparison).where(
                    Comparison.kind == "regeneration", Comparison.b_id == new.id
                )
            )
            old = (
                await session.get(Message, comparison.a_id)
                if comparison is not None
                else await session.scalar(
                    select(Message)
                    .where(
                        Message.parent_id == new.parent_id,
                        Message.role == "assistant",
                        Message.id < new.id,
                    )
                    .order_by(Message.id.desc())
                    .limit(1)
                )
            )
            if old is None:
                raise InvalidRequest(
                    "This answer is not a regeneration: there is no earlier answer to compare.",
                    param="message_id",
                )
            pair = await _side_by_side_of(session, old)
            if pair is not None and pair.winner is None:
                raise Conflict(
                    "Vote on the two answers to this question first.",
                    param="message_id",
                    code="vote_pending",
                )
            if comparison is None:
                comparison = _regeneration(who, old, _variant(old, pair), new.id, now, new.model)
                session.add(comparison)
            elif comparison.winner in ("a", "b") and comparison.winner != VERDICTS[verdict]:
                # The pair the earlier verdict made is withdrawn: logged by id, as deletions
                # are, for incremental exports to withdraw it from copies made earlier.
                session.add(Deletion(at=now, kind="verdict", subject_id=comparison.id))
            comparison.winner, comparison.voted_at, comparison.origin = (
                VERDICTS[verdict],
                now,
                origin,
            )
            comparison.discarded = _unfinished(old, new)
            await session.flush()
            if comparison.discarded is None:
                await self.credits.judge(
                    session, who.user_id, "comparison", comparison.id, new.updated_at, now
                )
            result = comparison_json(comparison)
        self.metrics.feedback.labels("verdict").inc()
        return result

    async def correct(
        self, who: Principal, answer_id: uuid.UUID, content: str, origin: str | None
    ) -> tuple[Message, dict[str, Any]]:
        """Store the person's rewrite of an answer as a sibling answer they wrote, shown from
        now on, and the (rewrite over original) preference. A rewrite the same as the answer,
        or as one the person wrote of it before, whitespace and punctuation aside, is refused;
        an answer's rewrites earn one credit between them."""
        content = content.strip()
        if not content:
            raise InvalidRequest("Write the improved answer first.", param="content")
        now = utcnow()
        async with self.db.transaction() as session:
            conversations = Conversations(session)
            original = await _answer(conversations, who, answer_id)
            if original.parent_id is None:
                raise InvalidRequest("This answer has no question.", param="message_id")
            gist = _gist(content)
            if _gist(original.content) == gist:
                raise InvalidRequest(
                    "The correction is the same as the answer (whitespace and punctuation "
                    "aside): change what it says.",
                    param="content",
                    code="correction_unchanged",
                )
            earlier = await session.scalars(
                select(Message.content)
                .join(Comparison, Comparison.b_id == Message.id)
                .where(
                    Comparison.conversation_id == original.conversation_id,
                    Comparison.kind == "correction",
                    Comparison.a_id == original.id,
                    Comparison.user_id == who.user_id,
                )
            )
            if any(_gist(text) == gist for text in earlier):
                raise Conflict(
                    "You already corrected this answer so (whitespace and punctuation aside).",
                    param="content",
                    code="duplicate_correction",
                )
            question = await session.get(Message, original.parent_id)
            assert question is not None
            rewrite = await conversations.add_message(
                Message(
                    id=new_id(),
                    conversation_id=original.conversation_id,
                    user_id=who.user_id,
                    parent_id=original.parent_id,
                    role="assistant",
                    content=content,
                    path_hash=node_hash(question.path_hash, Turn("assistant", content)),
                    depth=original.depth,
                    status="complete",
                    finish_reason="stop",
                    author="person",
                    created_at=now,
                    updated_at=now,
                )
            )
            await conversations.move_leaf(original.conversation_id, rewrite.id, now)
            comparison = Comparison(
                user_id=who.user_id,
                conversation_id=original.conversation_id,
                question_id=original.parent_id,
                a_id=original.id,
                b_id=rewrite.id,
                kind="correction",
                a_variant=original.model or "",
                b_variant="person",
                winner="b",
                origin=origin,
                created_at=now,
                voted_at=now,
            )
            session.add(comparison)
            await session.flush()
            await self.credits.judge(
                session, who.user_id, "correction", original.id, original.updated_at, now
            )
            result = comparison_json(comparison)
        self.metrics.feedback.labels("correction").inc()
        return rewrite, result

    async def vote(
        self, who: Principal, comparison_id: uuid.UUID, winner: str, origin: str | None
    ) -> dict[str, Any]:
        """The person's pick in a side-by-side, once; reveals the variants."""
        now = utcnow()
        async with self.db.transaction() as session:
            comparison = await session.scalar(
                select(Comparison).where(
                    Comparison.id == comparison_id,
                    Comparison.user_id == who.user_id,
                    Comparison.kind == "side_by_side",
                )
            )
            if comparison is None:
                raise NotFound("There is no such comparison.", code="comparison_not_found")
            if comparison.winner is not None:
                raise Conflict("You already voted on this comparison.", code="already_voted")
            a = await session.get(Message, comparison.a_id)
            b = await session.get(Message, comparison.b_id)
            assert a is not None and b is not None
            variants = (comparison.a_variant, comparison.b_variant)
            discarded = _unfinished(a, b)
            question = await session.get(Message, comparison.question_id)
            asked = question.content if question is not None else ""
            if discarded is None and (
                leaks_identity(a.content, variants, asked)
                or leaks_identity(b.content, variants, asked)
            ):
                discarded = "identity_leaked"
            comparison.winner, comparison.voted_at = winner, now
            comparison.discarded, comparison.origin = discarded, origin
            shown = b if winner == "b" else a
            await Conversations(session).move_leaf(comparison.conversation_id, shown.id, now)
            if discarded is None:
                await self.credits.judge(
                    session, who.user_id, "comparison", comparison.id,
                    max(a.updated_at, b.updated_at), now,
                )  # fmt: skip
            result = comparison_json(comparison)
        self.metrics.feedback.labels("vote").inc()
        return result


async def comparisons_in(session: AsyncSession, conversation_id: uuid.UUID) -> list[Comparison]:
    result = await session.scalars(
        select(Comparison)
        .where(Comparison.conversation_id == conversation_id)
        .order_by(Comparison.created_at)
    )
    return list(result.all())


async def _answer(conversations: Conversations, who: Principal, message_id: uuid.UUID) -> Message:
    message = await conversations.message_of(who.user_id, message_id)
    if message is None:
        raise NotFound("There is no such message.", code="message_not_found")
    if message.role != "assistant":
        raise InvalidRequest("Only answers can be compared.", param="message_id")
    return message


def _regeneration(
    who: Principal,
    old: Message,
    old_variant: str,
    new_id: uuid.UUID,
    now: datetime,
    model: str | None = None,
) -> Comparison:
    assert old.parent_id is not None
    return Comparison(
        user_id=who.user_id,
        conversation_id=old.conversation_id,
        question_id=old.parent_id,
        a_id=old.id,
        b_id=new_id,
        kind="regeneration",
        a_variant=old_variant,
        b_variant=model or old.model or "",
        created_at=now,
    )


async def _side_by_side_of(session: AsyncSession, answer: Message) -> Comparison | None:
    """The side-by-side comparison an answer is one of, if any."""
    return await session.scalar(
        select(Comparison).where(
            Comparison.conversation_id == answer.conversation_id,
            Comparison.kind == "side_by_side",
            or_(Comparison.a_id == answer.id, Comparison.b_id == answer.id),
        )
    )


def _variant(answer: Message, pair: Comparison | None) -> str:
    """What wrote an answer: its side's variant in a side-by-side (with its sampling), its
    model, or "person" for a correction."""
    if pair is not None:
        return pair.a_variant if pair.a_id == answer.id else pair.b_variant
    return answer.model or ("person" if answer.author else "")


def _gist(text: str) -> str:
    """A text without its whitespace and punctuation: two texts with the same gist differ in
    nothing else."""
    return "".join(
        c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")
    )


def _unfinished(*answers: Message) -> str | None:
    """Why a preference between these answers cannot count: one was cut or failed."""
    return None if all(a.status == "complete" for a in answers) else "answer_cut_or_failed"
