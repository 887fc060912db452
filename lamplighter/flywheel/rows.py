"""The rows one conversation gives in each export kind, with the cleaning they need.

``Rows(thread, shared).rows()`` turns one conversation (a ``Thread``: its messages as ``Node``s
and its comparisons as ``Pick``s) into ``(row, ids)`` pairs: the row in the export kind's fields
and the ids for ``index.jsonl``. It decides which answers are worth learning from and new to the
export (``usable``), which votes count, which turns before an answer spoil the rows after it,
and the DPO pairs of each question, and counts what it drops in the export's ``Report``; every
text (and every tool call's arguments) is scrubbed of personal data once per conversation. In
an incremental export it also lists, in ``withdrawn``, the rows that an earlier export may hold
and that no longer stand, for ``deletions.jsonl``: KTO rows, DPO pairs and SFT rows whose labels
changed (a rating removed, ratings, a verdict or a vote changed or given), and the row of a
conversation that changed.
``export.py`` reads the store and writes the files; see its docstring for what each kind holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from lamplighter.flywheel.dedup import Context, Deduplicator, Verdict
from lamplighter.flywheel.pii import Entity, scrub, scrub_json

if TYPE_CHECKING:
    from lamplighter.flywheel.export import Report

# At most this many (chosen, rejected) pairs per question, so one question with many
# regenerations does not dominate.
MAX_PAIRS_PER_QUESTION = 4
# A side-by-side's winner as LMSYS's Chatbot Arena data names it.
ARENA_WINNER = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
# Why an SFT row may go while its answer stays: labels given or changed since an earlier export
# (its own, those of the turns before it, or a sibling's that makes it a duplicate).
RELABELLED_OUT = frozenset(
    (
        "rated_down",
        "corrected",
        "rejected",
        "voted_both_bad",
        "regenerated",
        "bad_context",
        "duplicate_row",
    )
)

Row = dict[str, Any]
T = TypeVar("T")

# A word, for telling the names a model was told from those it made up.
_WORD = re.compile(r"[^\W\d_]{2,}")


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
    first_rated_at: datetime | None = None  # when the rating was first given
    # The structured output it was generated under (chat completions' response_format): the
    # schema the answer follows is in no message, so a row carries it.
    response_format: dict[str, Any] | None = None
    # Tool use: an answer's calls (OpenAI's ``tool_calls``), the call a "tool" turn answers,
    # and the tools an answer was generated with (a row needs their definitions).
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tools: list[dict[str, Any]] | None = None

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
    """One exportable conversation: its owner, the leaf it shows, its nodes and comparisons,
    when it last changed (a message added or the leaf moved, as the store records it) and when
    its owner's training consent last changed (None: never, as far as the store knows)."""

    id: uuid.UUID
    owner: uuid.UUID
    leaf: uuid.UUID | None
    nodes: list[Node]
    picks: list[Pick] = field(default_factory=list)
    updated_at: datetime | None = None
    consented_at: datetime | None = None

    def changed_since(self, since: datetime | None) -> bool:
        """Whether its owner consented, or any of its messages was written or rated, after
        ``since`` (always, without one): an incremental export counts a conversation it leaves
        out only then."""
        return (
            since is None
            or self.consented_since(since)
            or any(
                max(node.created_at, node.rated_at or node.created_at) > since
                for node in self.nodes
            )
        )

    def consented_since(self, since: datetime) -> bool:
        """Whether the owner's consent changed after ``since``: an export made then may have
        had none of their data (and one made before they withdrew it has been told to drop it)."""
        return self.consented_at is not None and self.consented_at > since

    def moved_at(self) -> datetime | None:
        """When it last changed: a message added, or the branch shown moved."""
        times = [node.created_at for node in self.nodes]
        if self.updated_at is not None:
            times.append(self.updated_at)
        return max(times, default=None)


@dataclass(frozen=True)
class Shared:
    """What the rows of every conversation of one export share."""

    kind: str
    since: datetime | None
    dedup: Deduplicator
    report: Report
    suspicious: frozenset[str]
    # Since ``since``: the answers whose rating was removed and the comparisons whose verdict
    # changed, each with when it last happened (empty without ``since``).
    unrated: Mapping[uuid.UUID, datetime] = field(default_factory=dict)
    revoted: Mapping[uuid.UUID, datetime] = field(default_factory=dict)


class Rows:
    """The rows one conversation gives, with the cleaning they need."""

    def __init__(self, thread: Thread, context: Shared) -> None:
        self.thread = thread
        self.context = context
        self.report = context.report
        # Someone who consented after ``since`` is in no earlier export: all their rows are new.
        since = context.since
        self.since = None if since is not None and thread.consented_since(since) else since
        self.by_id = {node.id: node for node in thread.nodes}
        self.children: defaultdict[uuid.UUID | None, list[Node]] = defaultdict(list)
        for node in thread.nodes:
            self.children[node.parent_id].append(node)
        self.answers = [node for node in thread.nodes if node.role == "assistant"]
        self._clean: dict[uuid.UUID, str] = {}
        self._calls: dict[uuid.UUID, list[dict[str, Any]]] = {}
        self._told: set[str] | None = None  # the words the conversation told the model
        self._verdicts: dict[uuid.UUID, Verdict] = {}
        self._judged: dict[uuid.UUID, str] | None = None
        self._spoilt: dict[uuid.UUID, bool] = {}
        self._contexts: dict[uuid.UUID, Context] = {}  # the prompt up to each node
        self._touched: dict[uuid.UUID, datetime | None] = {}  # labels changed since, to a node
        # deletions.jsonl lines: rows an earlier export may hold that no longer stand.
        self.withdrawn: list[dict[str, str]] = []

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
            written = node.role == "assistant" and node.author is None
            scrubbed = scrub(node.content, self._invented if written else None)
            self.report.pii.update(scrubbed.counts)
            self._clean[node.id] = scrubbed.text
        return self._clean[node.id]

    def _invented(self, entity: Entity, text: str) -> bool:
        """Whether a name in a model's answer is one it made up (a character, its own "I'm
        Zara"): none of its words is in what the people, tools or instructions of the
        conversation said. Such a name stays: replaced, it would teach the model to write
        placeholders; the names it was told are personal data like any other."""
        if entity.type != "NAME":
            return False
        if self._told is None:
            self._told = {
                word
                for node in self.by_id.values()
                if node.role != "assistant" or node.author is not None
                for word in _WORD.findall(node.content.lower())
            }
        return not any(
            word in self._told for word in _WORD.findall(text[entity.start : entity.end].lower())
        )

    def calls(self, node: Node) -> list[dict[str, Any]] | None:
        """A node's tool calls, their arguments scrubbed of personal data (still JSON text: a
        call's arguments carry what the person said as much as any message does), counted as
        texts are, once per conversation."""
        if not node.tool_calls:
            return None
        if node.id not in self._calls:
            self._calls[node.id] = [self._scrubbed_call(call) for call in node.tool_calls]
        return self._calls[node.id]

    def _scrubbed_call(self, call: dict[str, Any]) -> dict[str, Any]:
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
            return call
        scrubbed = scrub_json(function["arguments"])
        self.report.pii.update(scrubbed.counts)
        return call | {"function": function | {"arguments": scrubbed.text}}

    def turn(self, node: Node) -> dict[str, Any]:
        """A message of a row: its role and scrubbed text, and its tool calls or the call it
        answers, in OpenAI's shape."""
        turn: dict[str, Any] = {"role": node.role, "content": self.text(node)}
        if calls := self.calls(node):
            turn["tool_calls"] = calls
        if node.tool_call_id is not None:
            turn["tool_call_id"] = node.tool_call_id
        return turn

    def path(self, node: Node) -> list[dict[str, Any]]:
        turns = []
        current: Node | None = node
        while current is not None:
            turns.append(self.turn(current))
            current = self.by_id.get(current.parent_id) if current.parent_id else None
        return turns[::-1]

    def answer(self, node: Node) -> list[dict[str, Any]]:
        return [self.turn(node)]

    def question_of(self, answer: Node) -> Node | None:
        """The message an answer answers: its parent, or, past the tool calls and results in
        between (an answer after a tool's result), the user's message that started them."""
        node = self.by_id.get(answer.parent_id) if answer.parent_id else None
        while node is not None and (node.role == "tool" or node.tool_calls):
            node = self.by_id.get(node.parent_id) if node.parent_id else None
        return node

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
        return self.judged().get(answer.id) or self.replaced(answer)

    def replaced(self, answer: Node) -> str | None:
        """``"regenerated"`` when the person had another answer to the same question written
        and left this one: a complete answer by a model beside it, the conversation showing
        another branch, no turn after this one, no thumbs-up, and no verdict or side-by-side
        kept it (a regeneration's verdict says more; a side-by-side's answers are shown
        together, not one instead of the other). Regenerating is how people say "not this"
        without a word, so it is no demonstration; going back to it is "this one after all"."""
        if answer.rating == 1 or self.children.get(answer.id) or answer.id in self._kept:
            return None
        if answer.id in self._shown:
            return None
        others = [
            sibling
            for sibling in self.children[answer.parent_id]
            if sibling is not answer
            and sibling.role == "assistant"
            and sibling.model is not None
            and self.fault(sibling) is None
            and sibling.finish_reason != "length"  # cut short: no better answer than this one
        ]
        # Without a branch shown (none recorded), the newer answer is the one kept.
        if self.thread.leaf is None:
            others = [sibling for sibling in others if sibling.created_at > answer.created_at]
        return "regenerated" if others else None

    @cached_property
    def _kept(self) -> set[uuid.UUID]:
        """The answers a comparison keeps from counting as left: both of a side-by-side (voted
        or not) and both of a regeneration the person gave a verdict on."""
        return {
            answer
            for pick in self.thread.picks
            if pick.kind == "side_by_side" or pick.winner is not None
            for answer in (pick.a_id, pick.b_id)
        }

    @cached_property
    def _shown(self) -> set[uuid.UUID]:
        """The messages on the branch the conversation shows."""
        shown: set[uuid.UUID] = set()
        node = self.by_id.get(self.thread.leaf) if self.thread.leaf else None
        while node is not None:
            shown.add(node.id)
            node = self.by_id.get(node.parent_id) if node.parent_id else None
        return shown

    def kto_fault(self, answer: Node) -> str | None:
        """Why an answer is no KTO row whatever else is exported (None: it is one): a
        ``fault``, or a thumbs-up on an answer stopped at the length limit. Nothing in the row
        says it was cut, so as a good answer it teaches stopping mid-sentence; rated down, it
        is a bad answer like any other."""
        if reason := self.fault(answer):
            return reason
        if answer.rating == 1 and answer.finish_reason == "length":
            return "truncated"
        return None

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
        if not self._new(when or answer.created_at):
            return False  # exported before: not a removal
        return self.unusable(answer) is None

    def _new(self, when: datetime | None) -> bool:
        """Whether something that happened ``when`` is new to this export (all is, in a full
        one)."""
        return self.since is None or (when is not None and when > self.since)

    def unusable(self, answer: Node) -> str | None:
        """Why an answer is not one to learn from (None: it is one): ``unfit``, or its prompt
        a duplicate; counted."""
        reason = self.unfit(answer)
        if reason is None:
            question = self.question_of(answer)
            assert question is not None  # (else unfit: no_question)
            # Decided once per question: regenerations of one question share its verdict.
            verdict = self._verdicts.get(question.id)
            if verdict is None:
                verdict = self.context.dedup.check(self.text(question), self.prompt(question))
                self._verdicts[question.id] = verdict
            if verdict != "keep":
                reason = f"{verdict}_prompt"
        if reason is not None:
            self.report.removed[reason] += 1
            return reason
        self.report.saw(answer.created_at)
        return None

    def unfit(self, answer: Node) -> str | None:
        """Why an answer is nothing to learn from in this kind of export, whatever else is
        exported (None: it is something): its own fault (``fault``, for SFT ``sft_fault``, for
        KTO ``kto_fault``), no exchange with its question, an earlier turn that spoils it, or
        for SFT an earlier sibling that is the same row (``twin``). Not counted."""
        question = self.question_of(answer)
        kind = self.context.kind
        fault = {"sft": self.sft_fault, "kto": self.kto_fault}.get(kind, self.fault)
        reason = fault(answer) or _exchange_fault(question, answer)
        if reason is None and self.spoilt(question):
            reason = "bad_context"
        if reason is None and kind == "sft" and self.twin(answer):
            reason = "duplicate_row"
        return reason

    def twin(self, answer: Node) -> bool:
        """Whether an earlier sibling of an answer is an SFT row of the very same messages
        (siblings share the turns before them): two temperature-0 answers to one question, say,
        or one correction made twice. Training on a row twice only weighs it double."""
        for sibling in self.children[answer.parent_id]:
            if sibling is answer:
                return False
            if (
                sibling.role == "assistant"
                and self.turn(sibling) == self.turn(answer)
                and _format(sibling) == _format(answer)
                and self.unfit(sibling) is None
            ):
                return True
        return False

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
        if not self._new(pick.voted_at):
            return self.counts(pick)
        if reason := self.discount(pick):
            self.report.removed[reason] += 1
            return False
        return True

    def sft(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        """Every demonstration. In an incremental export, those written since, and those whose
        labels changed since (their own, those of the turns before them, or their siblings'):
        each is a row again if it is one now, else ``withdrawn`` if it existed before."""
        changes = self._answer_changes() if self.since is not None else {}
        for answer in self.answers:
            changed = self._changed_around(answer, changes)
            if changed is None and not self._new(answer.created_at):
                continue  # exported before as it stands
            reason = self.unusable(answer)  # with the demonstration's own faults (sft_fault)
            if reason is None:
                row = {"messages": _trained_once(self.path(answer))} | _format(answer)
                yield row, {"message_id": str(answer.id)}
            elif changed is not None and self._existed(answer) and reason in RELABELLED_OUT:
                self.withdraw({"message_id": str(answer.id)}, changed, reason)

    def _changed_around(
        self, answer: Node, changes: Mapping[uuid.UUID, datetime]
    ) -> datetime | None:
        """When the labels that decide an answer's SFT row last changed after ``since`` (None:
        not since): its own, those of the turns before it (they spoil it) and its siblings'
        (one may be, or have stopped being, a row of the same text)."""
        if not changes:
            return None
        latest = self._fold(
            answer, self._touched, None, lambda before, turn: _later(before, changes.get(turn.id))
        )
        for sibling in self.children[answer.parent_id]:
            latest = _later(latest, changes.get(sibling.id))
        return latest

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
            elif (gone := self._kto_gone(answer)) is not None:
                self.withdraw({"message_id": str(answer.id)}, *gone)

    def _kto_gone(self, answer: Node) -> tuple[datetime, str] | None:
        """When and why the KTO row an earlier export may hold of an answer went (None: it
        stands, or there was none): its rating removed since and not given again, or changed
        since to a thumbs-up on an answer stopped at the length limit (no positive)."""
        if self.since is None or not self._existed(answer):
            return None
        if answer.rating is None:
            removed = self.context.unrated.get(answer.id)
            return (removed, "rating_removed") if removed and not self.unfit(answer) else None
        rerated = answer.rated_at
        if rerated is None or rerated <= self.since or not self._rated_then(answer):
            return None
        return (rerated, "truncated") if self.unfit(answer) == "truncated" else None

    def dpo(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        """The pairs of each question; in an incremental export, every pair of each question
        whose labels changed since (a pair that stands again, say no longer contradicted or
        capped, is new too), and none of the others (the earlier export has them as they
        stand), with the pairs it may hold that no longer stand ``withdrawn``."""
        # (chosen, rejected, source, comparison) per question, in the order taken.
        candidates: defaultdict[uuid.UUID, list[tuple[Node, Node, str, Pick | None]]] = defaultdict(
            list
        )
        for question_id, siblings in self.children.items():
            if question_id is None:
                continue
            rated = [a for a in siblings if a.role == "assistant" and a.rating is not None]
            for good in (a for a in rated if a.rating == 1):
                for bad in (a for a in rated if a.rating == -1):
                    candidates[question_id].append((good, bad, "rating", None))
        for pick in self.thread.picks:
            if not self.counted(pick):
                continue
            if pick.winner not in ("a", "b"):
                if self._new(pick.voted_at):  # an earlier export counted it before
                    self.report.removed[f"{pick.winner}_vote (no pair)"] += 1
                continue
            a, b = self.by_id.get(pick.a_id), self.by_id.get(pick.b_id)
            if a is None or b is None:
                continue
            good, bad = (a, b) if pick.winner == "a" else (b, a)
            candidates[pick.question_id].append((good, bad, pick.kind, pick))
        if self.since is None:
            for pairs in candidates.values():
                yield from self._pairs(pairs, set(), {})
            return
        relabelled = self._relabelled()
        for question_id in [*candidates, *(q for q in relabelled if q not in candidates)]:
            changed = relabelled.get(question_id)
            if changed is None:
                continue  # nothing new: exported before as it stands
            kept: set[tuple[uuid.UUID, uuid.UUID]] = set()
            decided: dict[tuple[uuid.UUID, uuid.UUID], str | None] = {}
            yield from self._pairs(candidates.get(question_id, []), kept, decided)
            for (good_id, bad_id), gone in self._earlier_pairs(question_id).items():
                good, bad = self.by_id[good_id], self.by_id[bad_id]
                if (good_id, bad_id) not in kept and self._could_pair(good, bad):
                    ids = {"chosen_id": str(good_id), "rejected_id": str(bad_id)}
                    self.withdraw(ids, changed, decided.get((good_id, bad_id)) or gone)

    def _pairs(
        self,
        pairs: list[tuple[Node, Node, str, Pick | None]],
        kept: set[tuple[uuid.UUID, uuid.UUID]],
        decided: dict[tuple[uuid.UUID, uuid.UUID], str | None],
    ) -> Iterator[tuple[Row, dict[str, str | None]]]:
        """The rows of one question's candidate pairs, taken in order; each pair's fate goes
        in ``decided`` (None: kept, in ``kept``), the first time it is met."""
        # The person preferred each answer to the other, in two signals: neither stands.
        taken = {(good.id, bad.id) for good, bad, *_ in pairs}
        both_ways = {pair for pair in taken if pair[::-1] in taken}
        seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
        rows: set[str] = set()  # the rows kept, as JSON
        for good, bad, source, judged in pairs:
            pair = (good.id, bad.id)
            row = {
                "prompt": self.path(good)[:-1],
                "chosen": self.answer(good),
                "rejected": self.answer(bad),
            } | _format(good)
            key = json.dumps(row, sort_keys=True)
            reason: str | None = None
            if pair in both_ways:
                reason = "contradictory_pair"
            elif pair in seen:
                reason = "duplicate_pair"
            elif fault := self._pair_fault(good, bad):
                reason = fault
            elif key in rows:
                reason = "duplicate_row"  # another pair of the same two texts (say, corrections)
            elif len(kept) == MAX_PAIRS_PER_QUESTION:
                reason = "over_pair_cap"
            elif self.fault(bad) is not None:
                reason = "rejected_answer_unusable"
            seen.add(pair)
            if reason is not None:
                self.report.removed[reason] += 1
            else:
                reason = self.unusable(good)  # (counted)
            decided.setdefault(pair, reason)
            if reason is not None:
                continue
            kept.add(pair)
            rows.add(key)
            self.report.sources[source] += 1
            yield (
                row,
                {
                    "chosen_id": str(good.id),
                    "rejected_id": str(bad.id),
                    "source": source,
                    "comparison_id": str(judged.id) if judged else None,
                },
            )

    def _pair_fault(self, good: Node, bad: Node) -> str | None:
        """Why two answers make no pair whatever their labels (None: they may make one)."""
        if good.response_format != bad.response_format:
            return "format_differs"  # one was held to a format the other was not: not one task
        if good.tools != bad.tools:
            # One could call tools the other could not (a regeneration in the web chat, which
            # offers none): not the same task either.
            return "tools_differ"
        if good.finish_reason == "length":
            # Nothing in the row says the chosen answer was cut: it would teach stopping
            # mid-sentence. A cut answer may still be the rejected one.
            return "truncated_chosen"
        if _same_text(self.text(good), self.text(bad)) and self.calls(good) == self.calls(bad):
            return "identical_pair"  # nothing to prefer
        return None

    def withdraw(self, ids: dict[str, str], at: datetime, reason: str) -> None:
        """Name a row an earlier export may hold that no longer stands, for deletions.jsonl."""
        self.withdrawn.append(ids | {"at": at.isoformat(), "withdrawn": reason})
        self.report.withdrawn[reason] += 1

    def _existed(self, answer: Node) -> bool:
        return self.since is not None and answer.created_at <= self.since

    def _relabelled(self) -> dict[uuid.UUID, datetime]:
        """The questions whose answers' labels changed after ``since`` (a rating given,
        changed or removed, a verdict or vote given or changed), each with when it last did."""
        return self._latest((question, when) for _, question, when in self._label_changes())

    def _answer_changes(self) -> dict[uuid.UUID, datetime]:
        """The answers whose labels changed after ``since``, each with when they last did."""
        return self._latest((answer, when) for answer, _, when in self._label_changes())

    def _label_changes(self) -> Iterator[tuple[uuid.UUID, uuid.UUID | None, datetime | None]]:
        """(answer, its question, when) for every label given or last changed (a rating, a
        verdict, a vote, a correction) and every one taken back, at any time."""
        # Whether an answer was left for another depends on its siblings, the turns after it
        # and the branch shown: any change to the conversation (a message written or deleted,
        # the branch moved) may change it.
        moved = self.thread.moved_at()
        for answer in self.answers:
            for when in (answer.rated_at, self.context.unrated.get(answer.id), moved):
                yield answer.id, answer.parent_id, when
        for pick in self.thread.picks:
            for when in (pick.voted_at, self.context.revoted.get(pick.id)):
                yield pick.a_id, pick.question_id, when
                yield pick.b_id, pick.question_id, when

    def _latest(
        self, changes: Iterable[tuple[uuid.UUID | None, datetime | None]]
    ) -> dict[uuid.UUID, datetime]:
        """The latest time after ``since`` of each id's changes."""
        since = self.since
        assert since is not None
        latest: dict[uuid.UUID, datetime] = {}
        for key, when in changes:
            if key is not None and when is not None and when > since:
                latest[key] = max(latest.get(key, when), when)
        return latest

    def _earlier_pairs(self, question_id: uuid.UUID) -> dict[tuple[uuid.UUID, uuid.UUID], str]:
        """The (chosen, rejected) pairs of a question that the labels at ``since`` may have
        made, each with what took it away if it is gone: every pair the labels then could have
        given (a rating changed or removed since, or a verdict changed, could have been either
        way then), so that none a copy may hold is missed; naming one it lacks is harmless."""
        answers = [a for a in self.children[question_id] if a.role == "assistant"]
        then = {a.id: self._rated_then(a) for a in answers}
        earlier: dict[tuple[uuid.UUID, uuid.UUID], str] = {}
        for good in answers:
            for bad in answers:
                if good is not bad and 1 in then[good.id] and -1 in then[bad.id]:
                    removed = good.rating is None or bad.rating is None
                    gone = "rating_removed" if removed else "rating_changed"
                    earlier.setdefault((good.id, bad.id), gone)
        for pick in self.thread.picks:
            if pick.question_id != question_id or not {pick.a_id, pick.b_id} <= self.by_id.keys():
                continue
            for winner in self._voted_then(pick):
                pair = (pick.a_id, pick.b_id) if winner == "a" else (pick.b_id, pick.a_id)
                earlier.setdefault(pair, self.discount(pick) or "verdict_changed")
        return earlier

    def _rated_then(self, answer: Node) -> set[int]:
        """The ratings ``answer`` may have had at ``since``."""
        since = self.since
        assert since is not None
        if not self._existed(answer):
            return set()
        if answer.rating is not None and answer.rated_at and answer.rated_at <= since:
            return {answer.rating}  # unchanged since
        if answer.rating is not None and answer.first_rated_at and answer.first_rated_at <= since:
            return {1, -1}  # changed since
        if answer.id in self.context.unrated:
            return {1, -1}  # removed since (and perhaps given again)
        return set()

    def _voted_then(self, pick: Pick) -> tuple[str, ...]:
        """The winners (a or b) that ``pick`` may have had at ``since``."""
        since = self.since
        assert since is not None
        if pick.voted_at is None:
            return ()
        if pick.voted_at <= since:
            winners: tuple[str | None, ...] = (pick.winner,)
        elif pick.id in self.context.revoted:
            winners = ("a", "b")  # a verdict changed since: either may have stood
        else:
            return ()
        return tuple(winner for winner in winners if winner in ("a", "b"))

    def _could_pair(self, good: Node, bad: Node) -> bool:
        """Whether two answers could be a pair in some export, whatever their labels: held to
        one format, the chosen one not cut at the length limit, not one text (as written:
        scrubbing only makes more texts the same), neither faulty, and the chosen one fit
        (``unfit``)."""
        return (
            good.response_format == bad.response_format
            and good.finish_reason != "length"
            and not (_same_text(good.content, bad.content) and good.tool_calls == bad.tool_calls)
            and self.fault(bad) is None
            and self.unfit(good) is None
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
                "judge": self.judge,
                "tstamp": pick.voted_at.timestamp() if pick.voted_at else None,
            }
            yield row, {"comparison_id": str(pick.id), "a_id": str(a.id), "b_id": str(b.id)}

    @property
    def judge(self) -> str:
        """The voter, as Chatbot Arena's ``judge`` names one: a pseudonym (a hash of the
        account's id), the same for a person in every export, so votes can be counted per
        voter without the rows naming the account."""
        return "judge_" + hashlib.sha256(self.thread.owner.bytes).hexdigest()[:16]

    def conversations(self) -> Iterator[tuple[Row, dict[str, str | None]]]:
        """The branch shown, ending on a usable answer. In an incremental export, a
        conversation that changed since (a message added, the branch shown moved) gives its row
        again, whatever answer it ends on, and the row an earlier export may hold of it, which
        may end on another answer, is ``withdrawn`` by the conversation's id: applied first,
        that makes way for the new row, or leaves none where the conversation now gives none."""
        moved = self.thread.moved_at()
        if moved is None or not self._new(moved):
            return
        leaf = self.thread.leaf
        end = self.by_id.get(leaf) if leaf else (self.answers[-1] if self.answers else None)
        if end is not None and end.role == "assistant" and self.unusable(end) is None:
            yield {"messages": self.path(end)} | _format(end), {"message_id": str(end.id)}
        if any(self._existed(node) for node in self.thread.nodes):
            self.withdraw({"conversation_id": str(self.thread.id)}, moved, "conversation_changed")


def _trained_once(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An SFT row's messages, the answers before its own marked ``"weight": 0`` (OpenAI's
    fine-tuning format): each of them is the answer of a row of its own, so a conversation of
    N answers would otherwise train its first N times."""
    for turn in messages[:-1]:
        if turn["role"] == "assistant":
            turn["weight"] = 0
    return messages


def _format(answer: Node) -> Row:
    """A row's ``response_format`` and ``tools``, only where the answer was generated under
    a format or with tools: what the model was held to or offered, which no message shows."""
    row: Row = {}
    if answer.response_format is not None:
        row["response_format"] = answer.response_format
    if answer.tools is not None:
        row["tools"] = answer.tools
    return row


def _later(one: datetime | None, other: datetime | None) -> datetime | None:
    """The later of two times, either of which may be missing."""
    if one is None or other is None:
        return one or other
    return max(one, other)


def _same_text(one: str, other: str) -> bool:
    """Whether two texts differ at most in whitespace and punctuation: as a pair, nothing to
    prefer (a correction that only adds a full stop, say)."""
    return _bare(one) == _bare(other)


def _bare(text: str) -> str:
    return "".join(
        char
        for char in text
        if not char.isspace() and not unicodedata.category(char).startswith("P")
    )


def _exchange_fault(question: Node | None, answer: Node) -> str | None:
    """Why a question and its answer make no exchange to learn from (None: they do)."""
    if question is None or question.role != "user":
        return "no_question"
    # An answer that calls tools says what it does in its calls, often without a word.
    if len(question.content.split()) < 2 or (
        not answer.tool_calls and len(answer.content.split()) < 2
    ):
        return "one_word_exchange"
    return None
