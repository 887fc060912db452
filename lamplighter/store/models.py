"""The tables, as SQLAlchemy 2 typed models. Changing one means writing a migration.

Ids are UUIDv7 (time-ordered, so primary-key indexes stay append-mostly) except the usage ledger,
which is a 64-bit integer sequence. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    and_,
    event,
    or_,
    text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator
from uuid6 import uuid7

from lamplighter.conversation.threading import Turn


def new_id() -> uuid.UUID:
    """A UUIDv7: random, but ordered by creation time."""
    return uuid.UUID(bytes=uuid7().bytes)


def utcnow() -> datetime:
    return datetime.now(UTC)


# The usage rows of exchanges still in progress (a partial index's condition: queries that use
# the index say it in these words, not with a bound parameter).
IN_PROGRESS = "finish_reason = 'in_progress'"


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use lamplighter.store.models.utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


Timestamp = UTCDateTime()


def _without_nul(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


class Prose(TypeDecorator[str]):
    """Text that people and models write. PostgreSQL's text cannot hold a NUL character
    (``\x00``, valid Unicode and valid JSON, which a request or a model may send), and refuses
    the whole write; on every database it is stored as U+FFFD instead, so that a store moved
    from SQLite to PostgreSQL holds the same text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return _without_nul(value)


class ShortProse(TypeDecorator[str]):
    """``Prose`` of a bounded length (a title)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return _without_nul(value)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    plan: Mapped[str] = mapped_column(String(64), default="free")
    # The plan given by hand (when the account was made, by an admin or `users set`), apart
    # from billing: the one a person returns to when no subscription covers them any more.
    # None (accounts a subscription covered when this came in): billing's free plan.
    base_plan: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # Suspended or banned by an admin: since when, why, and until when (None: until restored).
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_until: Mapped[datetime | None] = mapped_column(Timestamp)
    # "Use my conversations to improve the model": True or False as the person chose, None to
    # follow the organisation's default (LAMPLIGHTER_TRAINING_CONSENT_DEFAULT).
    training_consent: Mapped[bool | None] = mapped_column(Boolean)
    # When that choice last changed (None: not since this column was added), set by
    # ``_consent_changed``: an incremental export gives all the data of someone who consented
    # after the export before it.
    training_consent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # What the person wants every new web chat to know (about them, how to answer): stored as
    # the first message, a system message, of each chat they start; None when they have none.
    custom_instructions: Mapped[str | None] = mapped_column(Prose)
    # A ban is a suspension an admin meant as final; both are lifted the same way.
    banned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())

    def active(self, now: datetime) -> bool:
        return self.disabled_at is None or (
            self.disabled_until is not None and self.disabled_until <= now
        )

    def status(self, now: datetime) -> str:
        """active, suspended or banned."""
        if self.active(now):
            return "active"
        return "banned" if self.banned else "suspended"


@event.listens_for(User.training_consent, "set")
def _consent_changed(user: User, value: bool | None, old: object, _: object) -> None:
    """Stamp each change of a person's training consent, whichever code makes it: the time is
    what lets an incremental export tell who consented after the export before it."""
    if value != old:
        user.training_consent_at = utcnow()


def user_active(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """SQL for ``User.active(now)`` (``now`` may be a bound parameter)."""
    return or_(
        User.disabled_at.is_(None),
        and_(User.disabled_until.is_not(None), User.disabled_until <= now),
    )


# The longest name an API key may have (``accounts.key_name`` checks it: SQLite does not).
KEY_NAME_LENGTH = 200


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(KEY_NAME_LENGTH), default="")
    # The first characters of the key, shown in listings so a person can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key. Keys are 256 random bits, so a fast hash is enough (unlike
    # passwords, they cannot be guessed from a dictionary); the plain key is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # What the key may do (see credentials.SCOPES), and when it stops working (None: never).
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(ShortProse(200))
    # The leaf of the branch the user last saw; the current path runs from the root to it.
    current_leaf_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (Index("ix_conversations_user_updated", "user_id", "updated_at"),)


class Message(Base):
    """One node of a conversation tree. Siblings (same parent) are regenerations or edits."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    # Denormalised owner, so that threading lookups and ownership checks need no join.
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Prose, default="")
    # Hash of the whole path from the root to this node (see conversation/threading.py).
    path_hash: Mapped[str] = mapped_column(String(64))
    depth: Mapped[int] = mapped_column(Integer)
    # complete | in_progress | cut | error
    status: Mapped[str] = mapped_column(String(16), default="complete")
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # What moderation flagged in the exchange an answer belongs to:
    # {"input": [categories], "output": [categories]}; None when nothing was.
    moderation: Mapped[dict[str, list[str]] | None] = mapped_column(JSON)
    # Who wrote an assistant message: None for the model; "person" for a correction, an answer
    # the person rewrote themselves ("improve this answer").
    author: Mapped[str | None] = mapped_column(String(16))
    # An answer generated under structured output: the format, as chat completions'
    # ``response_format`` (training data needs it: the schema is not in the messages).
    response_format: Mapped[dict[str, object] | None] = mapped_column(JSON)
    # The API client's ``metadata`` for a stored completion or response (up to 16 pairs).
    request_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # Tool use: an assistant message's calls (OpenAI's ``tool_calls``), or the id of the call a
    # "tool" message answers.
    tool_calls: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    tool_call_id: Mapped[str | None] = mapped_column(String(200))
    # The tools an answer was generated with (OpenAI's ``tools``): its training rows need them.
    tools: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    # A Responses API answer that continued another (``previous_response_id``): the answer it
    # continued, and the request's own instructions. The model saw those instead of the system
    # message its conversation starts with, which belongs to the first response.
    instructions: Mapped[str | None] = mapped_column(Prose)
    # A Responses API answer made in the background (null: not, or stored before it was kept).
    background: Mapped[bool | None] = mapped_column(Boolean)
    previous_response_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    __table_args__ = (Index("ix_messages_user_path", "user_id", "path_hash"),)

    @property
    def turn(self) -> Turn:
        """The message as a turn of its conversation, as its path hash was made."""
        calls = self.tool_calls
        encoded = None if calls is None else json.dumps(calls, separators=(",", ":"))
        return Turn(self.role, self.content, tool_calls=encoded, tool_call_id=self.tool_call_id)


class Usage(Base):
    """The usage ledger: one row per exchange, written whatever became of the stream."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # The plan the request was served under, and whether the exact-match cache answered it.
    plan: Mapped[str | None] = mapped_column(String(64))
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    # While in progress: when the replica running the exchange last said it still runs it
    # (``ChatService.heartbeat``); null in rows from before it was kept.
    alive_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        Index("ix_usage_user_created", "user_id", "created_at"),
        Index(
            "ix_usage_in_progress",
            "alive_at",
            postgresql_where=text(IN_PROGRESS),
            sqlite_where=text(IN_PROGRESS),
        ),
    )


class PlanRow(Base):
    """A plan's limits (see traffic/plans.py for what each field means)."""

    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer)
    requests_per_minute: Mapped[int] = mapped_column(Integer)
    tokens_per_minute: Mapped[int] = mapped_column(BigInteger)
    tokens_per_day: Mapped[int] = mapped_column(BigInteger)
    concurrent_streams: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    queue_patience_s: Mapped[float] = mapped_column(Float)
    ttft_slo_s: Mapped[float] = mapped_column(Float)
    cache_ttl_s: Mapped[float] = mapped_column(Float)
    browser_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # Prices per seat in minor units of currency (migration 0013); 0: not sold for that period.
    monthly_price: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    yearly_price: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    currency: Mapped[str] = mapped_column(String(3), default="usd", server_default="usd")


class WebSession(Base):
    """A browser session. The cookie holds a random token; only its SHA-256 is stored, so a
    leaked database does not log anyone in."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # The synchronizer token every state-changing request of this session must echo.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)


class Invite(Base):
    """A one-time link with which a person sets the password of an account made for them."""

    __tablename__ = "invites"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    plan: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Rating(Base):
    """A person's thumbs up or down on an answer; one per message, changeable."""

    __tablename__ = "ratings"

    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    rating: Mapped[int] = mapped_column(Integer)  # 1 or -1
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    comment: Mapped[str | None] = mapped_column(Prose)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # A keyed hash of the rater's network (see flywheel/credits.py): accounts rating from one
    # network count as one rater when trust is estimated, so sock puppets cannot agree with
    # each other.
    origin: Mapped[str | None] = mapped_column(String(32))


class Comparison(Base):
    """Two sibling answers to one question and which the person preferred.

    ``kind`` says where the pair came from: ``regeneration`` (after regenerating, the person
    said whether the new answer B is better than the old A), ``correction`` (the person rewrote
    answer A into B: B is preferred by construction) or ``side_by_side`` (two anonymous answers
    from two variants, whose identities are shown only after the vote). ``winner`` is None until
    the person votes; ``discarded`` says why a vote does not count (an answer was cut or failed,
    or an answer named its model).
    """

    __tablename__ = "comparisons"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    question_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    a_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    b_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    # What produced each answer: a model id, with its sampling when that is what differs
    # ("smollm2-135m-instruct@t=1.0"), or "person" for a correction.
    a_variant: Mapped[str] = mapped_column(String(240))
    b_variant: Mapped[str] = mapped_column(String(240))
    # a | b | tie | both_bad; None while the question is open.
    winner: Mapped[str | None] = mapped_column(String(16))
    discarded: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    voted_at: Mapped[datetime | None] = mapped_column(Timestamp, index=True)


class Credit(Base):
    """Extra daily tokens earned by one piece of feedback, or refused it, or taken back.

    One row per signal, so rating again never earns twice: ``signal`` is ``rating`` (the rated
    message), ``correction`` (the corrected message: one row for all its rewrites) or
    ``comparison`` (a verdict or vote). ``status``: granted, refused (a quality check failed;
    ``reason`` says which) or clawed_back (granted, then taken back: a later review found the
    rater untrustworthy or abusive, or the rating was removed).
    """

    __tablename__ = "credits"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    signal: Mapped[str] = mapped_column(String(16))  # rating | correction | comparison
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    changed_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (Index("ux_credits_signal", "signal", "subject_id", unique=True),)


class AuditEntry(Base):
    """One admin action, kept for good: the table is append-only (triggers refuse UPDATE and
    DELETE, see migration 0005)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    # Who acted, as they were then (the account may be deleted later; the entry stays).
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_email: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(320))
    details: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


class AbuseReport(Base):
    """A pattern the abuse watch found, waiting for an admin's decision (the review queue)."""

    __tablename__ = "abuse_reports"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(400))
    # The response the watch suggests: throttle, verify or suspend.
    response: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    # open, dismissed or actioned; with who decided, when, and what was done.
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    resolution: Mapped[str | None] = mapped_column(String(400))
    resolved_by: Mapped[str | None] = mapped_column(String(320))
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Deletion(Base):
    """What left the store (or the training data) and when, so that incremental exports can
    carry the deletion to copies made earlier. Only ids are kept, never content."""

    __tablename__ = "deletions"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    # conversation (deleted), message (an answer deleted through the API, with what continued
    # from it), user (account deleted or consent withdrawn); labels taken back: rating (a
    # rating removed; the answer's id), verdict (a regeneration verdict changed so that its
    # pair no longer stands; the comparison's id)
    kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid)


class ExportRun(Base):
    """One ``lamplighter export``: what it wrote and from what, for the console's record and so
    that the next incremental export knows where the last one ended."""

    __tablename__ = "export_runs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    conversations: Mapped[int] = mapped_column(Integer)
    since: Mapped[datetime | None] = mapped_column(Timestamp)
    min_trust: Mapped[float | None] = mapped_column(Float)
    # Rows each filter removed, by filter name.
    removed: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    # The directory written, as the exporting machine named it.
    out: Mapped[str] = mapped_column(String(1000))


class Team(Base):
    """People who share a subscription: its seats go to the members, first come first served.
    The owner may buy and change the team's subscription."""

    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class TeamMember(Base):
    """A person's place in a team (one team at most). Seats go by ``joined_at``."""

    __tablename__ = "team_members"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), index=True
    )
    joined_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class SubscriptionRow(Base):
    """A user's or a team's subscription to a plan, as billing/subscriptions.py's state machine
    left it. ``provider`` is stripe (``provider_ref`` is Stripe's subscription id) or manual
    (an admin's grant)."""

    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    # Exactly one of the two: who subscribes.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    team_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(16))
    provider_ref: Mapped[str | None] = mapped_column(String(255), unique=True)
    customer_ref: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    plan: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(8))
    seats: Mapped[int] = mapped_column(Integer, default=1)
    period_end: Mapped[datetime] = mapped_column(Timestamp)
    renews: Mapped[bool] = mapped_column(Boolean)
    pending_plan: Mapped[str | None] = mapped_column(String(64))
    grace_until: Mapped[datetime | None] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)
    provider_at: Mapped[datetime | None] = mapped_column(Timestamp)
    payment_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (team_id IS NULL)", name="ck_subscriptions_subject"),
    )


class BillingEvent(Base):
    """A payment provider's event, once handled: a replay of its id is dropped."""

    __tablename__ = "billing_events"

    # The provider's name and its event id: "stripe:evt_1Nq...".
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    # What handling it did: applied, ignored, unmatched (no subscription of ours).
    outcome: Mapped[str] = mapped_column(String(16))
