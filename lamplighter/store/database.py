"""The database engine and the unit of work.

One transaction per request or job: ``async with db.transaction() as session`` commits when the
block ends and rolls back when it raises. Repositories take the session and never commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from lamplighter.store import sqlite_inline


def masked(url: str) -> str:
    """A database URL fit to print or log: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; FULL makes each commit durable on disk
    # before it returns, so an acknowledged message survives a crash or power cut.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=8, max_overflow=8)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    return engine


def _inline_engine(url: str) -> AsyncEngine | None:
    """On a SQLite file, the engine of short work (the writer's batches, authentication's
    lookup) whose statements run on the loop's thread (see ``sqlite_inline``); None elsewhere
    (PostgreSQL, an in-memory database): the main engine does it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query:  # URI options the plain connector would not apply
        return None
    # Nothing on it yields to the loop but a batch's BEGIN and COMMIT: two connections suffice
    # (a batch's, and a lookup's while the batch waits); more open only for a burst.
    engine = create_async_engine(
        url, async_creator=sqlite_inline.connector(parsed.database), pool_size=2, max_overflow=6
    )
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._inline = _inline_engine(url)
        self._batches = (
            async_sessionmaker(self._inline, expire_on_commit=False)
            if self._inline is not None
            else self._sessions
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[AsyncSession]:
        """A transaction of the group-commit writer (``Writer``): on SQLite, on a connection
        that runs its statements on the loop's thread (see ``sqlite_inline``)."""
        async with self._batches() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection for a short read that needs no unit of work: no session, and no
        ``COMMIT`` (authentication, on every API request, took 0.37-0.39 ms instead of 0.55-0.64
        on SQLite that way). On SQLite it runs on the loop's thread (see ``sqlite_inline``):
        keep it to lookups on an index."""
        async with (self._inline or self.engine).connect() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._inline is not None:
            await self._inline.dispose()
        await self.engine.dispose()
