"""Exports of training data in Hugging Face TRL's conversational formats.

- ``sft``: ``{"messages": [...]}``, every complete answer not rated down, with the
  conversation that led to it;
- ``kto``: ``{"prompt": [...], "completion": [...], "label": bool}``, every rated answer;
- ``dpo``: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, from sibling answers to
  one question rated up and down (a regeneration the person preferred);
- ``conversations``: ``{"messages": [...]}``, the branch each conversation shows.

Only people who consent (their choice, else the organisation's default) and whose account is in
good standing are exported; cut, errored and moderation-flagged answers, one-word exchanges and
duplicate or over-frequent prompts are dropped; every text is scrubbed of personal data. The
dataset card (``README.md``) counts what each filter removed.

Rows stream from the database one conversation at a time, so memory stays flat however big the
store. Order and serialisation are fixed: the same store gives the same bytes. Each data row has
a matching line in ``index.jsonl`` (conversation, user and message ids) so that a later
``--since`` export's ``deletions.jsonl`` can be applied downstream.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import and_, false, func, or_, select, true

from lamplighter.flywheel.dedup import Deduplicator
from lamplighter.flywheel.pii import scrub
from lamplighter.store.database import Database
from lamplighter.store.models import Conversation, Deletion, Message, Rating, User, utcnow

KINDS = ("sft", "kto", "dpo", "conversations")
# At most this many (chosen, rejected) pairs per question, so one question with many
# regenerations does not dominate.
MAX_PAIRS_PER_QUESTION = 4


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


@dataclass
class Report:
    kind: str
    rows: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    conversations: int = 0
    sha256: str = ""
    deletions: int = 0

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
        progress: Callable[[int], None] = lambda _: None,
    ) -> Report:
        """Write ``out/{kind}.jsonl``, ``out/index.jsonl``, ``out/README.md`` (and with
        ``since``, ``out/deletions.jsonl``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown export {kind!r}; use one of {', '.join(KINDS)}")
        # A batch job with nothing else on its loop: plain blocking file writes are fine here.
        _mkdir(out)
        report = Report(kind)
        dedup = Deduplicator()
        data_path = out / f"{kind}.jsonl"
        digest = hashlib.sha256()
        with (
            data_path.open("w", encoding="utf-8") as data,
            (out / "index.jsonl").open("w", encoding="utf-8") as index,
        ):
            async for conversation, user_id, leaf, nodes in self._conversations(report):
                report.conversations += 1
                progress(len(nodes))
                for row, ids in _rows(kind, conversation, leaf, nodes, since, dedup, report):
                    line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
                    digest.update(line.encode())
                    data.write(line)
                    index.write(
                        json.dumps(
                            {"conversation_id": str(conversation), "user_id": str(user_id), **ids},
                            separators=(",", ":"),
                        )
                        + "\n"
                    )
                    report.rows += 1
        report.sha256 = digest.hexdigest()
        if since is not None:
            report.deletions = await self._deletions(out / "deletions.jsonl", since)
        with open_text(out / "README.md") as readme:
            readme.write(card(report, since))
        return report

    async def _conversations(
        self, report: Report
    ) -> AsyncIterator[tuple[uuid.UUID, uuid.UUID, uuid.UUID | None, list[Node]]]:
        """Each exportable conversation with its nodes, one at a time, in id order."""
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
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(User, User.id == Conversation.user_id)
            .outerjoin(Rating, Rating.message_id == Message.id)
            .order_by(Message.conversation_id, Message.id)
            .execution_options(yield_per=2000)
        )
        current: uuid.UUID | None = None
        owner: uuid.UUID | None = None
        leaf: uuid.UUID | None = None
        nodes: list[Node] = []
        skip: str | None = None
        async with self.db.transaction() as session:
            result = await session.stream(statement)
            async for row in result:
                if row[0] != current:
                    if current is not None and owner is not None:
                        if skip is None:
                            yield current, owner, leaf, nodes
                        else:
                            report.removed[skip] += 1
                    current, owner, leaf, nodes = row[0], row[1], row[2], []
                    skip = None if row[12] else "no_consent (conversations)"
                    if skip is None and not row[13]:
                        skip = "suspended_or_banned (conversations)"
                moderation = row[9] or {}
                nodes.append(
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
                    )
                )
            if current is not None and owner is not None:
                if skip is None:
                    yield current, owner, leaf, nodes
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


def _rows(
    kind: str,
    conversation: uuid.UUID,
    leaf: uuid.UUID | None,
    nodes: list[Node],
    since: datetime | None,
    dedup: Deduplicator,
    report: Report,
) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    by_id = {node.id: node for node in nodes}
    children: defaultdict[uuid.UUID | None, list[Node]] = defaultdict(list)
    for node in nodes:
        children[node.parent_id].append(node)
    clean: dict[uuid.UUID, str] = {}
    verdicts: dict[uuid.UUID, str] = {}

    def text(node: Node) -> str:
        if node.id not in clean:
            scrubbed = scrub(node.content)
            report.pii.update(scrubbed.counts)
            clean[node.id] = scrubbed.text
        return clean[node.id]

    def path(node: Node) -> list[dict[str, str]]:
        turns = []
        current: Node | None = node
        while current is not None:
            turns.append({"role": current.role, "content": text(current)})
            current = by_id.get(current.parent_id) if current.parent_id else None
        return turns[::-1]

    def usable(answer: Node) -> bool:
        """An answer worth learning from, and new to this export; counts what it drops."""
        question = by_id.get(answer.parent_id) if answer.parent_id else None
        reason = None
        if since is not None and answer.created_at <= since:
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
            report.removed[reason] += 1
            return False
        assert question is not None
        # Decided once per question: regenerations of one question share its verdict.
        if question.id not in verdicts:
            verdicts[question.id] = dedup.check(text(question))
        verdict = verdicts[question.id]
        if verdict != "keep":
            report.removed[f"{verdict}_prompt"] += 1
            return False
        report.saw(answer.created_at)
        return True

    answers = [node for node in nodes if node.role == "assistant"]
    if kind == "sft":
        for answer in answers:
            if answer.rating == -1:
                report.removed["rated_down"] += 1
            elif usable(answer):
                yield {"messages": path(answer)}, {"message_id": str(answer.id)}
    elif kind == "kto":
        for answer in answers:
            if answer.rating is not None and usable(answer):
                turns = path(answer)
                row = {"prompt": turns[:-1], "completion": turns[-1:], "label": answer.rating == 1}
                yield row, {"message_id": str(answer.id)}
    elif kind == "dpo":
        for question_id, siblings in children.items():
            rated = [a for a in siblings if a.role == "assistant" and a.rating is not None]
            chosen = [a for a in rated if a.rating == 1]
            rejected = [a for a in rated if a.rating == -1]
            if question_id is None or not chosen or not rejected:
                continue
            pairs = [(c, r) for c in chosen for r in rejected][:MAX_PAIRS_PER_QUESTION]
            for good, bad in pairs:
                if usable(good) and bad.status == "complete" and not bad.flagged:
                    prompt = path(good)[:-1]
                    row = {
                        "prompt": prompt,
                        "chosen": [{"role": "assistant", "content": text(good)}],
                        "rejected": [{"role": "assistant", "content": text(bad)}],
                    }
                    yield row, {"chosen_id": str(good.id), "rejected_id": str(bad.id)}
    else:  # conversations: the branch shown, ending on a usable answer
        end = by_id.get(leaf) if leaf else (answers[-1] if answers else None)
        if end is not None and end.role == "assistant" and usable(end):
            yield {"messages": path(end)}, {"message_id": str(end.id)}


def card(report: Report, since: datetime | None) -> str:
    """The dataset card: what is in the file, what was left out and why, and its hash."""
    fields = {
        "sft": '`{"messages": [{"role", "content"}, ...]}`',
        "kto": '`{"prompt": [...], "completion": [...], "label": true|false}`',
        "dpo": '`{"prompt": [...], "chosen": [...], "rejected": [...]}`',
        "conversations": '`{"messages": [...]}`',
    }[report.kind]
    span = (
        f"{report.first:%Y-%m-%d} to {report.last:%Y-%m-%d}" if report.first and report.last
        else "no rows"
    )  # fmt: skip
    lines = [
        f"# Lamplighter export: {report.kind}",
        "",
        f"- Rows: {report.rows} (from {report.conversations} conversations)",
        f"- Format: JSON lines, {fields} (Hugging Face TRL, conversational)",
        f"- Answers dated: {span}",
        f"- Incremental: since {since.isoformat()}" if since else "- Incremental: no (full)",
        f"- SHA-256 of `{report.kind}.jsonl`: `{report.sha256}`",
        "",
        "## Filters and what each removed",
        "",
        "| filter | removed |",
        "|---|---|",
    ]
    for reason, count in sorted(report.removed.items()):
        lines.append(f"| {reason} | {count} |")
    if not report.removed:
        lines.append("| (none applied) | 0 |")
    lines += [
        "",
        "Only people who consent to training (their own choice, else the organisation's",
        "default) and whose accounts are in good standing are included.",
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
        "`index.jsonl` has, line for line, the conversation, user and message ids of each row.",
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


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
