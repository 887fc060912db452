"""Clean-and-export throughput on a generated store.

Generates a SQLite store of ``--messages`` messages (conversations of a few question/answer
turns from consenting users, some rated, some with personal data, some duplicated), then runs
``lamplighter export sft`` on it in this process and reports messages per second and the peak
resident memory. Generation is not timed.

    .venv/bin/python -m bench.export --messages 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lamplighter.flywheel.export import Exporter
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
    batch_messages: list[tuple[object, ...]] = []
    batch_conversations: list[tuple[object, ...]] = []
    batch_ratings: list[tuple[object, ...]] = []
    while made < messages:
        user = rng.choice(users).hex
        conversation = new_id().hex
        when = start + timedelta(seconds=made)
        parent = None
        for turn in range(rng.randint(1, 4)):
            topic = rng.choice(TOPICS)
            pii = rng.choice(PII).format(n=rng.randint(0, 9999))
            question = (
                f"Tell me something about {topic} number {rng.randint(0, 10**6)}, {pii} "
                + " ".join(rng.choice(TOPICS) for _ in range(rng.randint(5, 40)))
            )
            answer = "Here is an answer about " + " ".join(
                rng.choice(TOPICS) for _ in range(rng.randint(20, 120))
            )
            for role, text in (("user", question), ("assistant", answer)):
                message = new_id().hex
                batch_messages.append(
                    (message, conversation, user, parent, role, text, f"h{message}", turn,
                     "complete", "stop" if role == "assistant" else None, when.isoformat(),
                     when.isoformat())
                )  # fmt: skip
                if role == "assistant" and rng.random() < 0.1:
                    batch_ratings.append(
                        (message, user, rng.choice((1, -1)), "[]", when.isoformat(),
                         when.isoformat())
                    )  # fmt: skip
                parent = message
                made += 1
        batch_conversations.append(
            (conversation, user, "t", parent, when.isoformat(), when.isoformat())
        )
        if len(batch_messages) > 50_000:
            _flush(db, batch_conversations, batch_messages, batch_ratings)
    _flush(db, batch_conversations, batch_messages, batch_ratings)
    db.commit()
    db.close()


def _flush(
    db: sqlite3.Connection,
    conversations: list[tuple[object, ...]],
    messages: list[tuple[object, ...]],
    ratings: list[tuple[object, ...]],
) -> None:
    db.executemany(
        "INSERT INTO conversations (id, user_id, title, current_leaf_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        conversations,
    )
    db.executemany(
        "INSERT INTO messages (id, conversation_id, user_id, parent_id, role, content, path_hash,"
        " depth, status, finish_reason, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        messages,
    )
    db.executemany(
        "INSERT INTO ratings (message_id, user_id, rating, reasons, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        ratings,
    )
    conversations.clear()
    messages.clear()
    ratings.clear()


async def export(path: Path, out: Path) -> tuple[int, int, float]:
    db = Database(f"sqlite+aiosqlite:///{path}")
    seen = 0

    def progress(n: int) -> None:
        nonlocal seen
        seen += n

    try:
        started = time.perf_counter()
        report = await Exporter(db, consent_default=False).run("sft", out, progress=progress)
        return seen, report.rows, time.perf_counter() - started
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.db"
        started = time.perf_counter()
        generate(store, args.messages)
        print(f"generated {args.messages} messages in {time.perf_counter() - started:.0f} s")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seen, rows, elapsed = asyncio.run(export(store, Path(tmp) / "out"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"exported {rows} SFT rows from {seen} messages in {elapsed:.1f} s")
        print(f"messages/s: {seen / elapsed:.0f}")
        print(f"peak RSS: {peak / 1024:.0f} MB (before the export: {before / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
