"""Group commit: the write jobs of many requests share one transaction and one commit.

A job is an async function of a session that writes (and may read what it needs to). ``run``
queues it and returns its result once the transaction holding it has *committed*, so what it
wrote is durable when the caller goes on. One task takes every job queued meanwhile into a single
transaction, in the order they came: under load one commit (one fsync on SQLite, one round trip
on PostgreSQL) covers many exchanges instead of each paying its own, jobs never wait on each
other's locks, and a job sees everything queued before it. With one request at a time nothing
waits to be batched: a lone job commits at once.

If a batch fails, its jobs run again one at a time, so only the job at fault fails (and a job
that raises on purpose, a ``NotFound`` say, costs the others one retry).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.store.database import Database

T = TypeVar("T")
Job = Callable[[AsyncSession], Awaitable[T]]
log = logging.getLogger(__name__)

MAX_BATCH = 256  # jobs in one transaction; more wait for the next


class Writer:
    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: deque[tuple[Job[Any], asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        # Committed transactions and the jobs they held (the ratio is the batching achieved).
        self.commits = 0
        self.jobs = 0

    def submit(self, job: Job[T]) -> asyncio.Future[T]:
        """Queue ``job``; the future resolves after its commit. Cancelling the future does not
        take the job back: it still runs."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="lamplighter-writer")
        return future

    async def run(self, job: Job[T]) -> T:
        """``job``'s result, once committed. Shielded: a caller cancelled (its client left) does
        not cancel a write it asked for."""
        return await asyncio.shield(self.submit(job))

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            take = min(len(self._queue), self.max_batch)
            await self._commit([self._queue.popleft() for _ in range(take)])

    async def _commit(self, batch: list[tuple[Job[Any], asyncio.Future[Any]]]) -> None:
        try:
            async with self.db.batch() as session:
                results = [await job(session) for job, _ in batch]
        except Exception as error:
            if len(batch) > 1:
                for item in batch:
                    await self._commit([item])
                return
            _, future = batch[0]
            if not future.done():
                future.set_exception(error)
            else:  # nobody waits for it any more: say so, or the failure goes unseen
                log.error("a write nobody waits for failed", exc_info=error)
            return
        self.commits += 1
        self.jobs += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Commit every queued job, then stop."""
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
