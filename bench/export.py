"""Clean-and-export throughput on a generated store.

Generates a SQLite store of ``--messages`` messages (conversations of a few question/answer
turns from consenting users, some rated, some with personal data, some duplicated; some
questions answered twice side by side and voted on, some regenerated and judged, some answers
corrected), then runs ``lamplighter export`` on it in this process and reports messages per
second and the peak resident memory of the export. The store is generated in a child process,
so the peak is the export's own (plus the imports); generation is not timed.

    .venv/bin/python -m bench.export --messages 1000000
    .venv/bin/python -m bench.export --messages 1000000 --format parquet --store /tmp/1m.db

``--store`` keeps the generated store at that path (and reuses it when it is already there), so
that several exports can be measured on one store.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import resource
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lamplighter.flywheel.export import FORMATS, KINDS, Exporter
from lamplighter.store import migrate
from lamplighter.store.database import Database
from lamplighter.store.models import new_id

TOPICS = ["lighthouses", "tax forms", "sourdough", "rust lifetimes", "tide tables", "jazz"]
PII = [
    "my email is jo.bloggs{n}@example.org",
    "call me on +44 20 7946 {n:04d}",
    "card 4111 1111 1111 1111",
    "",
    "",
    "",
]
# Shares of questions that get a second answer: side by side (voted on), regenerated (and
# judged), or corrected by the person.
SIDE_BY_SIDE, REGENERATED, CORRECTED = 0.05, 0.03, 0.02
# A side-by-side's winner: model-a is the better model; a few votes are discarded.
WINNERS = ["a"] * 5 + ["b"] * 3 + ["tie", "both_bad"]
DISCARDED = 0.05


class _Batches:
    """Rows waiting to be inserted, table by table."""

    def __init__(self) -> None:
        self.conversations: list[tuple[object, ...]] = []
        self.messages: list[tuple[object, ...]] = []
        self.ratings: list[tuple[object, ...]] = []
        self.comparisons: list[tuple[object, ...]] = []

    def flush(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO conversations (id, user_id, title, current_leaf_id, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            self.conversations,
        )
        db.executemany(
            "INSERT INTO messages (id, conversation_id, user_id, parent_id, role, content,"
            " path_hash, depth, status, finish_reason, created_at, updated_at, author, model) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.messages,
        )
        db.executemany(
            "INSERT INTO ratings (message_id, user_id, rating, reasons, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            self.ratings,
        )
        db.executemany(
            "INSERT INTO comparisons (id, user_id, conversation_id, question_id, a_id, b_id,"
            " kind, a_variant, b_variant, winner, discarded, created_at, voted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.comparisons,
        )
        for rows in (self.conversations, self.messages, self.ratings, self.comparisons):
            rows.clear()


def generate(path: Path, messages: int, seed: int = 7) -> None:
    """A store of about ``messages`` messages, written with plain sqlite3 for speed."""
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url)
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA journal_mode=OFF")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(max(1, messages // 400))]
    db.executemany(
        "INSERT INTO users (id, email, is_admin, plan, created_at, banned, training_consent) "
        "VALUES (?, ?, 0, 'free', ?, 0, 1)",
        [(u.hex, f"user{i}@example.org", start.isoformat()) for i, u in enumerate(users)],
    )
    made = 0
    batches = _Batches()
    while made < messages:
        user = rng.choice(users).hex
        conversation = new_id().hex
        stamp = (start + timedelta(seconds=made)).isoformat()
        parent = None
        for turn in range(rng.randint(1, 4)):
            topic = rng.choice(TOPICS)
            pii = rng.choice(PII).format(n=rng.randint(0, 9999))
            question_text = (
                f"Tell me something about {topic} number {rng.randint(0, 10**6)}, {pii} "
                + " ".join(rng.choice(TOPICS) for _ in range(rng.randint(5, 40)))
            )
            question = new_id().hex
            batches.messages.append(
                (question, conversation, user, parent, "user", question_text, f"h{question}",
                 2 * turn, "complete", None, stamp, stamp, None, None)
            )  # fmt: skip
            answers = [_answer(rng)]
            second = rng.random()
            kind = None
            if second < SIDE_BY_SIDE + REGENERATED + CORRECTED:
                kind = (
                    "side_by_side" if second < SIDE_BY_SIDE
                    else "regeneration" if second < SIDE_BY_SIDE + REGENERATED
                    else "correction"
                )  # fmt: skip
                answers.append(_answer(rng))
            ids = []
            for index, text in enumerate(answers):
                answer = new_id().hex
                ids.append(answer)
                # A person's correction, or an answer the model generated.
                author = "person" if kind == "correction" and index == 1 else None
                model = None if author else "model-a"
                batches.messages.append(
                    (answer, conversation, user, question, "assistant", text, f"h{answer}",
                     2 * turn + 1, "complete", "stop", stamp, stamp, author, model)
                )  # fmt: skip
                if kind is None and rng.random() < 0.1:
                    batches.ratings.append(
                        (answer, user, rng.choice((1, -1)), "[]", stamp, stamp)
                    )  # fmt: skip
            if kind is not None:
                batches.comparisons.append(_comparison(rng, kind, user, conversation, question,
                                                       ids, stamp))  # fmt: skip
            parent = ids[-1]
            made += 1 + len(answers)
        batches.conversations.append((conversation, user, "t", parent, stamp, stamp))
        if len(batches.messages) > 50_000:
            batches.flush(db)
    batches.flush(db)
    db.commit()
    db.close()


def _answer(rng: random.Random) -> str:
    return "Here is an answer about " + " ".join(
        rng.choice(TOPICS) for _ in range(rng.randint(20, 120))
    )


def _comparison(
    rng: random.Random,
    kind: str,
    user: str,
    conversation: str,
    question: str,
    answers: list[str],
    stamp: str,
) -> tuple[object, ...]:
    if kind == "side_by_side":
        variants, winner = ("model-a", "model-b"), rng.choice(WINNERS)
        if rng.random() < 0.5:  # model-a shown as B
            variants = ("model-b", "model-a")
            winner = {"a": "b", "b": "a"}.get(winner, winner)
        discarded = "identity_leaked" if rng.random() < DISCARDED else None
    elif kind == "regeneration":
        variants, winner, discarded = ("model-a", "model-a"), rng.choice(("a", "b", "tie")), None
    else:
        variants, winner, discarded = ("model-a", "person"), "b", None
    return (
        new_id().hex, user, conversation, question, answers[0], answers[1], kind,
        variants[0], variants[1], winner, discarded, stamp, stamp,
    )  # fmt: skip


async def export(
    path: Path, out: Path, kind: str, format: str, min_trust: float | None
) -> tuple[int, int, float]:
    db = Database(f"sqlite+aiosqlite:///{path}")
    seen = 0

    def progress(n: int) -> None:
        nonlocal seen
        seen += n

    try:
        started = time.perf_counter()
        report = await Exporter(db, consent_default=False).run(
            kind, out, format=format, min_trust=min_trust, progress=progress
        )
        return seen, report.rows, time.perf_counter() - started
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--kind", choices=KINDS, default="sft")
    parser.add_argument("--format", choices=FORMATS, default="jsonl")
    parser.add_argument("--min-trust", type=float, default=None)
    parser.add_argument("--store", type=Path, help="Keep (or reuse) the generated store here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store.db"
        if not store.exists():
            started = time.perf_counter()
            child = multiprocessing.get_context("spawn").Process(
                target=generate, args=(store, args.messages)
            )
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"generating the store failed ({child.exitcode})")
            print(f"generated {args.messages} messages in {time.perf_counter() - started:.0f} s")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seen, rows, elapsed = asyncio.run(
            export(store, Path(tmp) / "out", args.kind, args.format, args.min_trust)
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        trust = "" if args.min_trust is None else f", min-trust {args.min_trust:g}"
        print(
            f"exported {rows} {args.kind} rows ({args.format}{trust}) from {seen} messages "
            f"in {elapsed:.1f} s"
        )
        print(f"messages/s: {seen / elapsed:.0f}")
        print(f"peak RSS: {peak / 1024:.0f} MB (before the export: {before / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
