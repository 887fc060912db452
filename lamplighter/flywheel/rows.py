"""The rows one conversation gives in each export kind, with the cleaning they need.

``Rows(thread, shared).rows()`` turns one conversation (a ``Thread``: its messages as ``Node``s
and its comparisons as ``Pick``s) into ``(row, ids)`` pairs: the row in the export kind's fields
and the ids for ``index.jsonl``. It decides which answers are worth learning from and new to the
export (``usable``), which votes count, which turns before an answer spoil the rows after it,
and the DPO pairs of each question, and counts what it drops in the export's ``Report``; every
text is scrubbed of personal data once per conversation. ``export.py`` reads the store and
writes the files; see its docstring for what each kind holds.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from lamplighter.flywheel.dedup import Context, Deduplicator, Verdict
from lamplighter.flywheel.pii import scrub

if TYPE_CHECKING:
    from lamplighter.flywheel.export import Report

# At most this many (chosen, rejected) pairs per question, so one question with many
# regenerations does not dominate.
MAX_PAIRS_PER_QUESTION = 4
# A side-by-side's winner as LMSYS's Chatbot Arena data names it.
ARENA_WINNER = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}

Row = dict[str, Any]
T = TypeVar("T")


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
    model: str | None = None
    rated_at: datetime | None = None  # when the rating was given or last changed
    # The structured output it was generated under (chat completions' response_format): the
    # schema the answer follows is in no message, so a row carries it.
    response_format: dict[str, Any] | None = None

    @property
    def generated(self) -> bool:
        """Written by the service: by a model (which it names), or as a person's correction.
        An assistant turn that an API client sent in its ``messages`` has neither."""
        return self.model is not None or self.author == "person"


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

    def changed_since(self, since: datetime | None) -> bool:
        """Whether any of its messages was written or rated after ``since`` (always, without
        one): an incremental export counts a conversation it leaves out only then."""
        return since is None or any(
            max(node.created_at, node.rated_at or node.created_at) > since for node in self.nodes
        )


@dataclass(frozen=True)
class Shared:
    """What the rows of every conversation of one export share."""

    kind: str
    since: datetime | None
    dedup: Deduplicator
    report: Report
    suspicious: frozenset[str]


class Rows:
    """The rows one conversation gives, with the cleaning they need."""

    def __init__(self, thread: Thread, context: Shared) -> None:
        self.thread = thread
        self.context = context
        self.report = context.report
        self.by_id = {node.id: node for node in thread.nodes}
        self.children: defaultdict[uuid.UUID | None, list[Node]] = defaultdict(list)
        for node in thread.nodes:
            self.children[node.parent_id].append(node)
        self.answers = [node for node in thread.nodes if node.role == "assistant"]
        self._clean: dict[uuid.UUID, str] = {}
        self._verdicts: dict[uuid.UUID, Verdict] = {}
        self._judged: dict[uuid.UUID, str] | None = None
        self._spoilt: dict[uuid.UUID, bool] = {}
        self._contexts: dict[uuid.UUID, Context] = {}  # the prompt up to each node

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

    @staticmethod
    def fault(answer: Node) -> str | None:
        """Why an answer is nothing to learn from whatever its rating (None: it is not):
        written by the API client, not complete, or flagged."""
        if not answer.generated:
            return "client_written_answer"
        if answer.status != "complete":
            return f"{answer.status}_answer"
        if answer.flagged:
            return "moderation_flagged"
        return None

    def sft_fault(self, answer: Node) -> str | None:
        """Why an answer is no demonstration to learn from (None: it is one): a ``fault``, or
        stopped at the length limit, rated down, or ruled out by a comparison (``judged``)."""
        if reason := self.fault(answer):
            return reason
        if answer.finish_reason == "length":
            return "truncated"
        if answer.rating == -1:
            return "rated_down"
        return self.judged().get(answer.id)

    def judged(self) -> dict[uuid.UUID, str]:
        """The answers the person's comparisons rule out as demonstrations, and why: the
        answer a correction replaced, both answers of a side-by-side voted both bad, and the
        worse answer of any vote that counts (a regeneration verdict, a side-by-side vote)."""
        if self._judged is None:
            corrected: set[uuid.UUID] = set()
            both_bad: set[uuid.UUID] = set()
            rejected: set[uuid.UUID] = set()
            for pick in self.thread.picks:
                if pick.kind == "correction":
                    corrected.add(pick.a_id)
                elif not self.counts(pick):
                    continue
                elif pick.winner == "both_bad":
                    both_bad.update((pick.a_id, pick.b_id))
                elif pick.winner in ("a", "b"):
                    rejected.add(pick.b_id if pick.winner == "a" else pick.a_id)
            # Later entries win: each answer gets the first reason of corrected, voted both
            # bad, rejected that applies.
            self._judged = (
                dict.fromkeys(rejected, "rejected")
                | dict.fromkeys(both_bad, "voted_both_bad")
                | dict.fromkeys(corrected, "corrected")
            )
        return self._judged

    def spoilt(self, node: Node | None) -> bool:
        """Whether ``node`` or a turn before it is an answer that spoils the rows after it.

        TRL trains on every assistant turn of an SFT row's ``messages``, so for SFT that is any
        answer that is no demonstration itself (``sft_fault``: written by the API client, cut,
        flagged, truncated, rated down, ruled out by a comparison). The prompt of the other
        kinds is context, not trained on: there only an answer cut, errored or flagged (its
        question flagged included) spoils it. Decided once per node, from the root down.
        """
        strict = self.context.kind == "sft"

        def spoils(turn: Node) -> bool:
            if turn.role != "assistant":
                return False
            if strict:
                return self.sft_fault(turn) is not None
            return turn.status != "complete" or turn.flagged

        return self._fold(node, self._spoilt, False, lambda spoilt, turn: spoilt or spoils(turn))

    def prompt(self, question: Node) -> Context:
        """The turns before ``question`` in its prompt (scrubbed, as exported), for the
        deduplicator: a prompt is the whole conversation up to the question."""
        parent = self.by_id.get(question.parent_id) if question.parent_id else None
        return self._fold(
            parent,
            self._contexts,
            Context(),
            lambda before, turn: before.then(f"{turn.role}: {self.text(turn)}"),
        )

    def _fold(
        self, node: Node | None, memo: dict[uuid.UUID, T], start: T, step: Callable[[T, Node], T]
    ) -> T:
        """``step`` folded over the path from the root to ``node`` (``start`` before the
        root), each node's value kept in ``memo``: each node of a conversation is folded once,
        however many rows pass through it."""
        chain: list[Node] = []
        while node is not None and node.id not in memo:
            chain.append(node)
            node = self.by_id.get(node.parent_id) if node.parent_id else None
        value = memo[node.id] if node is not None else start
        for turn in reversed(chain):
            value = memo[turn.id] = step(value, turn)
        return value

    def usable(self, answer: Node, when: datetime | None = None) -> bool:
        """An answer worth learning from, and new to this export (``when`` it was rated or
        judged, by default when it was written); counts what it drops."""
        since = self.context.since
        question = self.by_id.get(answer.parent_id) if answer.parent_id else None
        if since is not None and (when or answer.created_at) <= since:
            return False  # exported before: not a removal
        fault = self.sft_fault if self.context.kind == "sft" else self.fault
        reason = fault(answer) or _exchange_fault(question, answer)
        if reason is None and self.spoilt(question):
            reason = "bad_context"
        if reason is not None:
            self.report.removed[reason] += 1
            return False
        assert question is not None
        # Decided once per question: regenerations of one question share its verdict.
        verdict = self._verdicts.get(question.id)
        if verdict is None:
            verdict = self.context.dedup.check(self.text(question), self.prompt(question))
            self._verdicts[question.id] = verdict
        if verdict != "keep":
            self.report.removed[f"{verdict}_prompt"] += 1
            return False
        self.report.saw(answer.created_at)
        return True

    def discount(self, pick: Pick) -> str | None:
        """Why a vote given does not count (None: it counts): discarded, or from a voter
        found suspicious."""
        if pick.discarded is not None:
            return f"discarded_vote ({pick.discarded})"
        if pick.kind == "side_by_side" and str(pick.user_id) in self.context.suspicious:
            return "suspicious_voter"
        return None

    def counts(self, pick: Pick) -> bool:
        """A vote that counts: given, not discarded, not from a voter found suspicious."""
        return pick.winner is not None and self.discount(pick) is None

    def counted(self, pick: Pick) -> bool:
        """``counts``, counting what it drops (an open question is not a removal, nor is a vote
        an incremental export has had before)."""
        if pick.winner is None:
            return False
        since = self.context.since
        if since is not None and (pick.voted_at is None or pick.voted_at <= since):
            return self.counts(pick)
        if reason := self.discount(pick):
            self.report.removed[reason] += 1
            return False
        return True

    def sft(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        for answer in self.answers:
            if self.usable(answer):  # with the demonstration's own faults (sft_fault)
                row = {"messages": self.path(answer)} | _format(answer)
                yield row, {"message_id": str(answer.id)}

    def kto(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        for answer in self.answers:
            if answer.rating is not None and self.usable(answer, answer.rated_at):
                turns = self.path(answer)
                row = {
                    "prompt": turns[:-1],
                    "completion": turns[-1:],
                    "label": answer.rating == 1,
                } | _format(answer)
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
                    when = max(filter(None, (good.rated_at, bad.rated_at)), default=None)
                    candidates[question_id].append((good, bad, "rating", None, when))
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
            # The person preferred each answer to the other, in two signals: neither stands.
            taken = {(good.id, bad.id) for good, bad, *_ in pairs}
            both_ways = {pair for pair in taken if pair[::-1] in taken}
            seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
            kept = 0
            for good, bad, source, judged, when in pairs:
                if (good.id, bad.id) in both_ways:
                    self.report.removed["contradictory_pair"] += 1
                    continue
                if (good.id, bad.id) in seen:
                    self.report.removed["duplicate_pair"] += 1
                    continue
                seen.add((good.id, bad.id))
                if good.response_format != bad.response_format:
                    # One answer was held to a format the other was not: not the same task.
                    self.report.removed["format_differs"] += 1
                    continue
                if self.text(good).strip() == self.text(bad).strip():
                    self.report.removed["identical_pair"] += 1  # nothing to prefer
                    continue
                if kept == MAX_PAIRS_PER_QUESTION:
                    self.report.removed["over_pair_cap"] += 1
                    continue
                if self.fault(bad) is not None:
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
                } | _format(good)
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
            if self.fault(b) is not None:
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


def _format(answer: Node) -> Row:
    """A row's ``response_format``, only where the answer was generated under one."""
    return {} if answer.response_format is None else {"response_format": answer.response_format}


def _exchange_fault(question: Node | None, answer: Node) -> str | None:
    """Why a question and its answer make no exchange to learn from (None: they do)."""
    if question is None or question.role != "user":
        return "no_question"
    if len(question.content.split()) < 2 or len(answer.content.split()) < 2:
        return "one_word_exchange"
    return None
