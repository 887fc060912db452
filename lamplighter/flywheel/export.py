"""Exports of training data in Hugging Face TRL's conversational formats, and of arena votes.

- ``sft``: ``{"messages": [...]}``, every complete answer not rated down, with the
  conversation that led to it; a person's correction of an answer is one, and the answer it
  replaced is not (nor are answers a side-by-side voter called both bad);
- ``kto``: ``{"prompt": [...], "completion": [...], "label": bool}``, every rated answer;
- ``dpo``: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, from four sources:
  sibling answers rated up and down (``rating``), regeneration verdicts (better or worse;
  "same" gives no pair), corrections (the rewrite over the original) and side-by-side votes
  (A or B; a tie or "both bad" gives no pair). Only votes that count (not discarded, not from a
  suspicious voter) on answers that are complete and not flagged make pairs. Rated pairs are
  taken first, then comparisons in the order they were made; a pair met twice (the same chosen
  and rejected answers) is kept once, and a question gives at most ``MAX_PAIRS_PER_QUESTION``;
- ``conversations``: ``{"messages": [...]}``, the branch each conversation shows;
- ``votes``: one row per counted side-by-side vote, named as in LMSYS's Chatbot Arena data:
  ``{"prompt", "model_a", "model_b", "answer_a", "answer_b", "winner"}``.

Only people who consent (their choice, else the organisation's default) and whose account is in
good standing are exported; cut, errored and moderation-flagged answers, one-word exchanges and
duplicate or over-frequent prompts are dropped; every text is scrubbed of personal data. With
``min_trust``, conversations whose owner (the rater of everything in them: ratings, verdicts and
votes are only ever given by the owner) is trusted less than that are dropped too, in every
kind; trust is the store-wide estimate of ``credits.Credits.estimate``, and a person with no
checkable labels has the prior trust (``trust.PRIOR_TRUST``, 2/3). The dataset card
(``README.md``) counts what each filter removed.

Rows stream from the database one conversation at a time, with the conversation's comparisons
read beside it by a second cursor in the same order, so memory stays flat however big the store.
One exception, for ``votes`` and ``dpo``: side-by-side voters whose votes disagree with the
consensus (``leaderboard.check_voters``, as Arena screens voters) are dropped, which needs every
vote first; a first pass streams the side-by-side votes (a few fields each, far fewer than
messages) into memory for that check. Order and serialisation are fixed: the same store gives
the same bytes, in JSON lines or Parquet. Each data row has a matching line in ``index.jsonl``
(conversation, user and message ids) so that a later ``--since`` export's ``deletions.jsonl``
can be applied downstream.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from sqlalchemy import and_, false, func, or_, select, true

from lamplighter.flywheel.credits import Credits
from lamplighter.flywheel.dedup import Deduplicator
from lamplighter.flywheel.leaderboard import Outcome, Vote, check_voters
from lamplighter.flywheel.pii import scrub
from lamplighter.flywheel.policy import CreditPolicy
from lamplighter.flywheel.trust import PRIOR_TRUST
from lamplighter.store.database import Database
from lamplighter.store.models import (
    Comparison,
    Conversation,
    Deletion,
    ExportRun,
    Message,
    Rating,
    User,
    utcnow,
)

KINDS = ("sft", "kto", "dpo", "conversations", "votes")
FORMATS = ("jsonl", "parquet")
# Where DPO pairs come from, in the order they are taken.
SOURCES = ("rating", "regeneration", "correction", "side_by_side")
# At most this many (chosen, rejected) pairs per question, so one question with many
# regenerations does not dominate.
MAX_PAIRS_PER_QUESTION = 4
# A side-by-side's winner as LMSYS's Chatbot Arena data names it.
ARENA_WINNER = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
_OUTCOMES: dict[str, Outcome] = {"a": "a", "b": "b", "tie": "tie", "both_bad": "both_bad"}
# Parquet rows are buffered and written this many at a time, one row group each.
ROW_GROUP = 2000

_TURNS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
# Each kind's columns, fixed: an empty export has them too, and loaders never guess.
SCHEMAS: dict[str, Any] = {
    "sft": pa.schema([("messages", _TURNS)]),
    "kto": pa.schema([("prompt", _TURNS), ("completion", _TURNS), ("label", pa.bool_())]),
    "dpo": pa.schema([("prompt", _TURNS), ("chosen", _TURNS), ("rejected", _TURNS)]),
    "conversations": pa.schema([("messages", _TURNS)]),
    "votes": pa.schema(
        [
            ("prompt", _TURNS),
            ("model_a", pa.string()),
            ("model_b", pa.string()),
            ("answer_a", _TURNS),
            ("answer_b", _TURNS),
            ("winner", pa.string()),
        ]
    ),
}

Row = dict[str, Any]


@dataclass(frozen=True)
class Node:
    id: uuid.UUID
    parent_id: uuid.UUID | None
    role: str
    content: str
    status: str
    finish_reason: str | None
    flagged: bool
    rating: int | None
    created_at: datetime
    author: str | None = None


@dataclass(frozen=True)
class Pick:
    """A comparison: which of two sibling answers the conversation's owner preferred."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    question_id: uuid.UUID
    a_id: uuid.UUID
    b_id: uuid.UUID
    kind: str
    a_variant: str
    b_variant: str
    winner: str | None
    discarded: str | None
    voted_at: datetime | None


@dataclass(frozen=True)
class Thread:
    """One exportable conversation: its owner, the leaf it shows, its nodes and comparisons."""

    id: uuid.UUID
    owner: uuid.UUID
    leaf: uuid.UUID | None
    nodes: list[Node]
    picks: list[Pick] = field(default_factory=list)


@dataclass
class Report:
    kind: str
    format: str = "jsonl"
    rows: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    conversations: int = 0
    sha256: str = ""
    deletions: int = 0
    min_trust: float | None = None
    suspicious_voters: int | None = None  # None: not checked (kinds without votes)

    @property
    def filename(self) -> str:
        return f"{self.kind}.{self.format}"

    def saw(self, when: datetime) -> None:
        self.first = when if self.first is None else min(self.first, when)
        self.last = when if self.last is None else max(self.last, when)


class Exporter:
    def __init__(self, db: Database, consent_default: bool) -> None:
        self.db = db
        self.consent_default = consent_default

    async def run(
        self,
        kind: str,
        out: Path,
        *,
        since: datetime | None = None,
        format: str = "jsonl",
        min_trust: float | None = None,
        progress: Callable[[int], None] = lambda _: None,
    ) -> Report:
        """Write ``out/{kind}.{format}``, ``out/index.jsonl``, ``out/README.md`` (and with
        ``since``, ``out/deletions.jsonl``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown export {kind!r}; use one of {', '.join(KINDS)}")
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        if min_trust is not None and not 0 <= min_trust <= 1:
            raise ValueError(f"min_trust is from 0 to 1, not {min_trust}")
        # A batch job with nothing else on its loop: plain blocking file writes are fine here.
        _mkdir(out)
        report = Report(kind, format=format, min_trust=min_trust)
        trusted = await self._trusted(min_trust)
        suspicious: frozenset[str] = frozenset()
        if kind in ("dpo", "votes"):
            suspicious = await self._suspicious_voters()
            report.suspicious_voters = len(suspicious)
        context = _Context(kind, since, Deduplicator(), report, suspicious)
        data_path = out / report.filename
        writer: Writer = (
            JsonLines(data_path) if format == "jsonl" else ParquetRows(data_path, SCHEMAS[kind])
        )
        with writer, open_text(out / "index.jsonl") as index:
            threads = self._threads(report, trusted, picks=kind in ("sft", "dpo", "votes"))
            async with aclosing(threads):
                async for thread in threads:
                    report.conversations += 1
                    progress(len(thread.nodes))
                    for row, ids in _Rows(thread, context).rows():
                        writer.write(row)
                        line = {"conversation_id": str(thread.id), "user_id": str(thread.owner)}
                        index.write(json.dumps({**line, **ids}, separators=(",", ":")) + "\n")
                        report.rows += 1
        report.sha256 = writer.sha256
        if since is not None:
            report.deletions = await self._deletions(out / "deletions.jsonl", since)
        with open_text(out / "README.md") as readme:
            readme.write(card(report, since))
        async with self.db.transaction() as session:
            session.add(
                ExportRun(
                    kind=kind,
                    format=format,
                    rows=report.rows,
                    conversations=report.conversations,
                    since=since,
                    min_trust=min_trust,
                    removed=dict(sorted(report.removed.items())),
                    sha256=report.sha256,
                    out=str(out),
                )
            )
        return report

    async def _trusted(self, min_trust: float | None) -> Callable[[uuid.UUID], bool]:
        """Whether a person is trusted at least ``min_trust`` (everyone, without one)."""
        if min_trust is None:
            return lambda _: True
        estimated, _ = await Credits(self.db, CreditPolicy()).estimate()
        raters: Mapping[str, float] = estimated.raters
        return lambda owner: raters.get(str(owner), PRIOR_TRUST) >= min_trust

    async def _suspicious_voters(self) -> frozenset[str]:
        """Side-by-side voters whose votes disagree with everyone else's more than chance
        allows; every counted vote in the store is the evidence."""
        votes: list[Vote] = []
        names: dict[str, str] = {}  # one copy of each voter and model name, however many votes
        async with self.db.transaction() as session:
            result = await session.stream(
                select(
                    Comparison.user_id,
                    Comparison.a_variant,
                    Comparison.b_variant,
                    Comparison.winner,
                )
                .where(
                    Comparison.kind == "side_by_side",
                    Comparison.winner.is_not(None),
                    Comparison.discarded.is_(None),
                )
                .order_by(Comparison.id)
                .execution_options(yield_per=5000)
            )
            async for user_id, a, b, winner in result:
                if winner in _OUTCOMES:
                    voter = str(user_id)
                    a, b = names.setdefault(a, a), names.setdefault(b, b)
                    votes.append(Vote(names.setdefault(voter, voter), a, b, _OUTCOMES[winner]))
        return frozenset(check.voter for check in check_voters(votes) if check.suspicious)

    async def _threads(
        self,
        report: Report,
        trusted: Callable[[uuid.UUID], bool],
        *,
        picks: bool,
    ) -> AsyncGenerator[Thread, None]:
        """Each exportable conversation, with its comparisons when ``picks``."""
        comparisons = _Merge(self._picks()) if picks else None
        try:
            async with aclosing(self._conversations(report)) as conversations:
                async for thread in conversations:
                    if not trusted(thread.owner):
                        report.removed["low_trust (conversations)"] += 1
                        continue
                    if comparisons is not None:
                        thread.picks.extend(await comparisons.take(thread.id))
                    yield thread
        finally:
            if comparisons is not None:
                await comparisons.close()

    async def _picks(self) -> AsyncGenerator[Pick, None]:
        """Every comparison, in conversation order (the order of ``_conversations``)."""
        async with self.db.transaction() as session:
            result = await session.stream(
                select(
                    Comparison.id,
                    Comparison.conversation_id,
                    Comparison.user_id,
                    Comparison.question_id,
                    Comparison.a_id,
                    Comparison.b_id,
                    Comparison.kind,
                    Comparison.a_variant,
                    Comparison.b_variant,
                    Comparison.winner,
                    Comparison.discarded,
                    Comparison.voted_at,
                )
                .order_by(Comparison.conversation_id, Comparison.id)
                .execution_options(yield_per=2000)
            )
            async for row in result:
                yield Pick(**row._mapping)

    async def _conversations(self, report: Report) -> AsyncGenerator[Thread, None]:
        """Each conversation of consenting people in good standing, one at a time, in id
        order."""
        consent = (
            or_(User.training_consent.is_(None), User.training_consent == true())
            if self.consent_default
            else User.training_consent == true()
        )
        now = utcnow()
        in_good_standing = or_(
            User.disabled_at.is_(None),
            and_(
                User.banned == false(), User.disabled_until.is_not(None), User.disabled_until <= now
            ),
        )
        statement = (
            select(
                Message.conversation_id,
                Conversation.user_id,
                Conversation.current_leaf_id,
                Message.id,
                Message.parent_id,
                Message.role,
                Message.content,
                Message.status,
                Message.finish_reason,
                Message.moderation,
                Message.created_at,
                Rating.rating,
                consent.label("consents"),
                in_good_standing.label("standing"),
                Message.author,
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(User, User.id == Conversation.user_id)
            .outerjoin(Rating, Rating.message_id == Message.id)
            .order_by(Message.conversation_id, Message.id)
            .execution_options(yield_per=2000)
        )
        thread: Thread | None = None
        skip: str | None = None
        async with self.db.transaction() as session:
            result = await session.stream(statement)
            async for row in result:
                if thread is None or row[0] != thread.id:
                    if thread is not None:
                        if skip is None:
                            yield thread
                        else:
                            report.removed[skip] += 1
                    thread = Thread(row[0], row[1], row[2], [])
                    skip = None if row[12] else "no_consent (conversations)"
                    if skip is None and not row[13]:
                        skip = "suspended_or_banned (conversations)"
                moderation = row[9] or {}
                thread.nodes.append(
                    Node(
                        id=row[3],
                        parent_id=row[4],
                        role=row[5],
                        content=row[6],
                        status=row[7],
                        finish_reason=row[8],
                        flagged=bool(moderation.get("input") or moderation.get("output"))
                        or row[8] == "content_filter",
                        rating=row[11],
                        created_at=row[10],
                        author=row[14],
                    )
                )
            if thread is not None:
                if skip is None:
                    yield thread
                else:
                    report.removed[skip] += 1

    async def _deletions(self, path: Path, since: datetime) -> int:
        """What was deleted (or withdrawn from training) after ``since``, by id."""
        count = 0
        async with self.db.transaction() as session:
            result = await session.stream(
                select(Deletion).where(Deletion.at > since).order_by(Deletion.id)
            )
            with open_text(path) as out:
                async for (deletion,) in result:
                    key = "conversation_id" if deletion.kind == "conversation" else "user_id"
                    line = {key: str(deletion.subject_id), "at": deletion.at.isoformat()}
                    out.write(json.dumps(line, separators=(",", ":")) + "\n")
                    count += 1
        return count


class _Merge:
    """Comparisons, sorted by conversation, handed out conversation by conversation as the
    (equally sorted) conversations go by: a merge join of two streams."""

    def __init__(self, picks: AsyncGenerator[Pick, None]) -> None:
        self.picks = picks
        self.head: Pick | None = None
        self.done = False

    async def take(self, conversation: uuid.UUID) -> list[Pick]:
        taken: list[Pick] = []
        while not self.done:
            if self.head is None:
                try:
                    self.head = await anext(self.picks)
                except StopAsyncIteration:
                    self.done = True
                    break
            if self.head.conversation_id > conversation:
                break
            if self.head.conversation_id == conversation:
                taken.append(self.head)
            self.head = None  # taken, or of a conversation not exported
        return taken

    async def close(self) -> None:
        await self.picks.aclose()


@dataclass(frozen=True)
class _Context:
    """What the rows of every conversation of one export share."""

    kind: str
    since: datetime | None
    dedup: Deduplicator
    report: Report
    suspicious: frozenset[str]


class _Rows:
    """The rows one conversation gives, with the cleaning they need."""

    def __init__(self, thread: Thread, context: _Context) -> None:
        self.thread = thread
        self.context = context
        self.report = context.report
        self.by_id = {node.id: node for node in thread.nodes}
        self.children: defaultdict[uuid.UUID | None, list[Node]] = defaultdict(list)
        for node in thread.nodes:
            self.children[node.parent_id].append(node)
        self.answers = [node for node in thread.nodes if node.role == "assistant"]
        self._clean: dict[uuid.UUID, str] = {}
        self._verdicts: dict[uuid.UUID, str] = {}

    def rows(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        kind = self.context.kind
        if kind == "sft":
            return self.sft()
        if kind == "kto":
            return self.kto()
        if kind == "dpo":
            return self.dpo()
        if kind == "votes":
            return self.votes()
        return self.conversations()

    def text(self, node: Node) -> str:
        if node.id not in self._clean:
            scrubbed = scrub(node.content)
            self.report.pii.update(scrubbed.counts)
            self._clean[node.id] = scrubbed.text
        return self._clean[node.id]

    def path(self, node: Node) -> list[dict[str, str]]:
        turns = []
        current: Node | None = node
        while current is not None:
            turns.append({"role": current.role, "content": self.text(current)})
            current = self.by_id.get(current.parent_id) if current.parent_id else None
        return turns[::-1]

    def answer(self, node: Node) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": self.text(node)}]

    def usable(self, answer: Node, when: datetime | None = None) -> bool:
        """An answer worth learning from, and new to this export (``when`` it was judged,
        by default when it was written); counts what it drops."""
        since = self.context.since
        question = self.by_id.get(answer.parent_id) if answer.parent_id else None
        reason = None
        if since is not None and (when or answer.created_at) <= since:
            return False  # exported before: not a removal
        if answer.status != "complete":
            reason = f"{answer.status}_answer"
        elif answer.flagged:
            reason = "moderation_flagged"
        elif question is None or question.role != "user":
            reason = "no_question"
        elif len(question.content.split()) < 2 or len(answer.content.split()) < 2:
            reason = "one_word_exchange"
        if reason is not None:
            self.report.removed[reason] += 1
            return False
        assert question is not None
        # Decided once per question: regenerations of one question share its verdict.
        if question.id not in self._verdicts:
            self._verdicts[question.id] = self.context.dedup.check(self.text(question))
        verdict = self._verdicts[question.id]
        if verdict != "keep":
            self.report.removed[f"{verdict}_prompt"] += 1
            return False
        self.report.saw(answer.created_at)
        return True

    def counted(self, pick: Pick) -> bool:
        """A vote that counts: given, not discarded, not from a voter found suspicious;
        counts what it drops (an open question is not a removal)."""
        if pick.winner is None:
            return False
        if pick.discarded is not None:
            self.report.removed[f"discarded_vote ({pick.discarded})"] += 1
            return False
        if pick.kind == "side_by_side" and str(pick.user_id) in self.context.suspicious:
            self.report.removed["suspicious_voter"] += 1
            return False
        return True

    def sft(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        corrected = {pick.a_id for pick in self.thread.picks if pick.kind == "correction"}
        both_bad = {
            answer_id
            for pick in self.thread.picks
            if pick.kind == "side_by_side" and pick.winner == "both_bad" and not pick.discarded
            for answer_id in (pick.a_id, pick.b_id)
        }
        for answer in self.answers:
            if answer.rating == -1:
                self.report.removed["rated_down"] += 1
            elif answer.id in corrected:
                self.report.removed["corrected"] += 1
            elif answer.id in both_bad:
                self.report.removed["voted_both_bad"] += 1
            elif self.usable(answer):
                yield {"messages": self.path(answer)}, {"message_id": str(answer.id)}

    def kto(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        for answer in self.answers:
            if answer.rating is not None and self.usable(answer):
                turns = self.path(answer)
                row = {"prompt": turns[:-1], "completion": turns[-1:], "label": answer.rating == 1}
                yield row, {"message_id": str(answer.id)}

    def dpo(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        # (chosen, rejected, source, comparison, judged at) per question, in the order taken.
        candidates: defaultdict[
            uuid.UUID, list[tuple[Node, Node, str, Pick | None, datetime | None]]
        ] = defaultdict(list)
        for question_id, siblings in self.children.items():
            if question_id is None:
                continue
            rated = [a for a in siblings if a.role == "assistant" and a.rating is not None]
            for good in (a for a in rated if a.rating == 1):
                for bad in (a for a in rated if a.rating == -1):
                    candidates[question_id].append((good, bad, "rating", None, None))
        for pick in self.thread.picks:
            if not self.counted(pick):
                continue
            if pick.winner not in ("a", "b"):
                self.report.removed[f"{pick.winner}_vote (no pair)"] += 1
                continue
            a, b = self.by_id.get(pick.a_id), self.by_id.get(pick.b_id)
            if a is None or b is None:
                continue
            good, bad = (a, b) if pick.winner == "a" else (b, a)
            candidates[pick.question_id].append((good, bad, pick.kind, pick, pick.voted_at))
        for pairs in candidates.values():
            seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
            kept = 0
            for good, bad, source, judged, when in pairs:
                if (good.id, bad.id) in seen:
                    self.report.removed["duplicate_pair"] += 1
                    continue
                seen.add((good.id, bad.id))
                if kept == MAX_PAIRS_PER_QUESTION:
                    self.report.removed["over_pair_cap"] += 1
                    continue
                if bad.status != "complete" or bad.flagged:
                    self.report.removed["rejected_answer_unusable"] += 1
                    continue
                if not self.usable(good, when):
                    continue
                kept += 1
                self.report.sources[source] += 1
                row = {
                    "prompt": self.path(good)[:-1],
                    "chosen": self.answer(good),
                    "rejected": self.answer(bad),
                }
                yield (
                    row,
                    {
                        "chosen_id": str(good.id),
                        "rejected_id": str(bad.id),
                        "source": source,
                        "comparison_id": str(judged.id) if judged else None,
                    },
                )

    def votes(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        for pick in self.thread.picks:
            if pick.kind != "side_by_side" or not self.counted(pick):
                continue
            a, b = self.by_id.get(pick.a_id), self.by_id.get(pick.b_id)
            if a is None or b is None:
                continue
            if b.status != "complete" or b.flagged:
                self.report.removed["answer_b_unusable"] += 1
                continue
            if not self.usable(a, pick.voted_at):
                continue
            row = {
                "prompt": self.path(a)[:-1],
                "model_a": pick.a_variant,
                "model_b": pick.b_variant,
                "answer_a": self.answer(a),
                "answer_b": self.answer(b),
                "winner": ARENA_WINNER[pick.winner or ""],
            }
            yield row, {"comparison_id": str(pick.id), "a_id": str(a.id), "b_id": str(b.id)}

    def conversations(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        """The branch shown, ending on a usable answer."""
        leaf = self.thread.leaf
        end = self.by_id.get(leaf) if leaf else (self.answers[-1] if self.answers else None)
        if end is not None and end.role == "assistant" and self.usable(end):
            yield {"messages": self.path(end)}, {"message_id": str(end.id)}


class Writer(Protocol):
    """Where the rows go: one file, closed on leaving the ``with`` block."""

    sha256: str

    def write(self, row: Row) -> None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(self, *_: object) -> None: ...


class JsonLines:
    """One compact JSON object a line, keys in the row's order, UTF-8."""

    def __init__(self, path: Path) -> None:
        self.file = open_text(path)
        self._digest = hashlib.sha256()
        self.sha256 = ""

    def write(self, row: Row) -> None:
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._digest.update(line.encode())
        self.file.write(line)

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *_: object) -> None:
        self.file.close()
        self.sha256 = self._digest.hexdigest()


class ParquetRows:
    """Parquet with a fixed schema, written ``ROW_GROUP`` rows at a time (memory stays flat).

    Nothing in the file depends on when or where it was written (Parquet stores no timestamps;
    the writer's version string and the Arrow schema are constant), so the same rows give the
    same bytes.
    """

    def __init__(self, path: Path, schema: Any) -> None:
        self.path = path
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema, compression="zstd", compression_level=3)
        self.buffered: list[Row] = []
        self.sha256 = ""

    def write(self, row: Row) -> None:
        self.buffered.append(row)
        if len(self.buffered) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        self.writer.write_table(pa.Table.from_pylist(self.buffered, schema=self.schema))
        self.buffered.clear()

    def __enter__(self) -> ParquetRows:
        return self

    def __exit__(self, *_: object) -> None:
        if self.buffered:
            self._flush()
        self.writer.close()
        self.sha256 = _file_sha256(self.path)


def card(report: Report, since: datetime | None) -> str:
    """The dataset card: what is in the file, what was left out and why, and its hash."""
    fields = {
        "sft": '`{"messages": [{"role", "content"}, ...]}` (Hugging Face TRL, conversational)',
        "kto": '`{"prompt": [...], "completion": [...], "label": true|false}` (Hugging Face TRL, '
        "conversational)",
        "dpo": '`{"prompt": [...], "chosen": [...], "rejected": [...]}` (Hugging Face TRL, '
        "conversational)",
        "conversations": '`{"messages": [...]}` (Hugging Face TRL, conversational)',
        "votes": '`{"prompt": [...], "model_a", "model_b", "answer_a": [...], "answer_b": [...], '
        '"winner": "model_a"|"model_b"|"tie"|"tie (bothbad)"}` (LMSYS Chatbot Arena style)',
    }[report.kind]
    container = "JSON lines" if report.format == "jsonl" else "Parquet (zstd)"
    span = (
        f"{report.first:%Y-%m-%d} to {report.last:%Y-%m-%d}" if report.first and report.last
        else "no rows"
    )  # fmt: skip
    lines = [
        f"# Lamplighter export: {report.kind}",
        "",
        f"- Rows: {report.rows} (from {report.conversations} conversations)",
        f"- Format: {container}, {fields}",
        f"- Answers dated: {span}",
        f"- Incremental: since {since.isoformat()}" if since else "- Incremental: no (full)",
        f"- Minimum rater trust: {report.min_trust:g}" if report.min_trust is not None
        else "- Minimum rater trust: none",
        f"- SHA-256 of `{report.filename}`: `{report.sha256}`",
        "",
        "## Filters and what each removed",
        "",
        "| filter | removed |",
        "|---|---|",
    ]  # fmt: skip
    for reason, count in sorted(report.removed.items()):
        lines.append(f"| {reason} | {count} |")
    if not report.removed:
        lines.append("| (none applied) | 0 |")
    lines += [
        "",
        "Only people who consent to training (their own choice, else the organisation's",
        "default) and whose accounts are in good standing are included.",
    ]
    if report.min_trust is not None:
        lines.append(
            f"Conversations of people whose rater trust is below {report.min_trust:g} are left "
            "out (trust: one-coin Dawid-Skene agreement with other raters; people with no "
            f"checkable labels count as {PRIOR_TRUST:.2f})."
        )
    if report.suspicious_voters is not None:
        lines.append(
            "Side-by-side voters who disagree with the consensus beyond chance (Bradley-Terry, "
            f"as Chatbot Arena screens voters): {report.suspicious_voters}; their votes are left "
            "out."
        )
    if report.kind == "dpo":
        lines += ["", "## Where the pairs come from", "", "| source | pairs |", "|---|---|"]
        lines += [f"| {source} | {report.sources[source]} |" for source in SOURCES]
    lines += [
        "",
        "## Personal data replaced by placeholders",
        "",
        "| type | replaced |",
        "|---|---|",
    ]
    for kind, count in sorted(report.pii.items()):
        lines.append(f"| {kind} | {count} |")
    if not report.pii:
        lines.append("| (none found) | 0 |")
    lines += [
        "",
        "`index.jsonl` has, line for line, the conversation, user and message ids of each row"
        + (" and the source of each pair." if report.kind == "dpo" else "."),
    ]
    if since:
        lines.append(
            f"`deletions.jsonl` lists {report.deletions} conversations and people whose data must "
            "be removed from earlier exports."
        )
    return "\n".join(lines) + "\n"


async def count_messages(db: Database) -> int:
    """How many messages an export will read at most (for its progress bar)."""
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


def open_text(path: Path) -> TextIO:
    return path.open("w", encoding="utf-8")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
