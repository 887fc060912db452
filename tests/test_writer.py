"""Group commit (store/writer.py): jobs from concurrent requests share commits, each result is
durable when ``run`` returns, a bad job fails alone, and a caller that leaves does not take its
write back."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.accounts import AccountService
from lamplighter.store.database import Database
from lamplighter.store.models import Usage, User, utcnow
from lamplighter.store.usage import UsageLedger
from lamplighter.store.writer import Writer


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


async def _user(db: Database) -> User:
    return await AccountService(db).create_user(f"{uuid.uuid4().hex}@example.org")


def _row(user: User, tokens: int) -> dict[str, object]:
    return {
        "user_id": user.id,
        "model": "m",
        "prompt_tokens": tokens,
        "completion_tokens": 0,
        "latency_ms": 1,
        "finish_reason": "stop",
        "created_at": utcnow(),
    }


async def _count(db: Database, user: User) -> int:
    """Rows committed for ``user``, read through a connection of its own."""
    async with db.transaction() as session:
        found = await session.scalar(
            select(func.count()).select_from(Usage).where(Usage.user_id == user.id)
        )
    return int(found or 0)


async def test_concurrent_jobs_share_commits_and_are_durable_when_run_returns(
    db: Database,
) -> None:
    user, writer = await _user(db), Writer(db)
    seen: list[int] = []

    async def request(tokens: int) -> None:
        async def job(session: AsyncSession) -> int:
            return await UsageLedger(session).record(_row(user, tokens))

        await writer.run(job)
        # Committed: a reader on another connection already sees it.
        seen.append(await _count(db, user))

    await asyncio.gather(*(request(n) for n in range(200)))
    assert await _count(db, user) == 200
    assert writer.jobs == 200 and writer.commits < 100  # the jobs shared transactions
    assert min(seen) >= 1
    await writer.close()


async def test_a_failing_job_fails_alone_and_the_rest_of_its_batch_commits(db: Database) -> None:
    user, writer = await _user(db), Writer(db)

    async def good(session: AsyncSession) -> int:
        return await UsageLedger(session).record(_row(user, 1))

    async def bad(session: AsyncSession) -> int:
        await UsageLedger(session).record(_row(user, 2))
        raise LookupError("this one is refused")

    results = await asyncio.gather(
        *(writer.run(bad if n == 5 else good) for n in range(10)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results].count("LookupError") == 1
    assert isinstance(results[5], LookupError)
    ids = [r for r in results if isinstance(r, int)]
    assert len(set(ids)) == 9
    assert await _count(db, user) == 9  # the bad job's own row went with it
    await writer.close()


async def test_a_cancelled_caller_does_not_cancel_its_write(db: Database) -> None:
    user, writer = await _user(db), Writer(db)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(session: AsyncSession) -> int:
        started.set()
        await release.wait()  # a write still running when the client leaves
        return await UsageLedger(session).record(_row(user, 3))

    caller = asyncio.create_task(writer.run(slow))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await writer.close()  # waits for every queued job's commit
    assert await _count(db, user) == 1


async def test_jobs_run_in_the_order_they_came(db: Database) -> None:
    user, writer = await _user(db), Writer(db)
    order: list[int] = []

    def job(n: int) -> Callable[[AsyncSession], Awaitable[None]]:
        async def write(session: AsyncSession) -> None:
            order.append(n)
            await UsageLedger(session).record(_row(user, n))

        return write

    futures = [writer.submit(job(n)) for n in range(50)]
    await asyncio.gather(*futures)
    assert order == list(range(50))
    await writer.close()


async def test_on_sqlite_a_batch_waiting_for_another_writers_lock_leaves_the_loop_free(
    sqlite_url: str,
) -> None:
    """The writer runs its statements on the loop's thread (store/sqlite_inline.py), but while
    another connection (a CLI command, another process) holds SQLite's write lock, its batch
    waits for the lock off the loop: the server goes on serving meanwhile, and the batch commits
    once the lock is let go."""
    db = Database(sqlite_url)
    user, writer = await _user(db), Writer(db)
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock until it commits
    try:
        write = writer.submit(lambda session: UsageLedger(session).record(_row(user, 7)))
        # Ten turns of the loop: the batch has started and is waiting for the lock. Had the wait
        # blocked the loop, these would return only when it gave up ("database is locked").
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert not write.done()
        assert await _count(db, user) == 0  # reads go on meanwhile
    finally:
        other.commit()
        other.close()
    assert isinstance(await write, int)
    assert await _count(db, user) == 1
    await writer.close()
    await db.close()
