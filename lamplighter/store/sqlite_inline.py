"""The SQLite connection for short work: the group-commit writer's batches and the lookup that
authenticates each API request.

aiosqlite runs every call on a thread of its own and wakes the event loop with each result:
about four round trips a statement (cursor, execute, fetch, close), a few dozen an exchange, each
a thread hand-off and a loop wake-up. This work is short (a few inserts and updates by primary
key, lookups on an index), so this connection runs its statements on the loop's own thread, and
leaves to a worker thread only the two calls that may wait: ``BEGIN IMMEDIATE``, for the write
lock another connection or process may hold (``busy_timeout``), and ``COMMIT``, for the fsync
(``synchronous=FULL``). Holding the write lock, nothing else a batch runs waits on a lock, and
in WAL mode a read never waits for a writer. ``bench overhead`` measured it (docs/operations.md).

It has the shape of an aiosqlite connection, which SQLAlchemy's aiosqlite dialect adapts
(``create_async_engine(..., async_creator=...)``). Only this work uses it: a long read (an
export, an admin page) still runs on aiosqlite, off the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

# Statements that never need the write lock (a PRAGMA must not run inside a transaction).
_READS = ("select", "pragma")


class Cursor:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._cursor = connection.sqlite.cursor()
        self.arraysize = 1

    async def __aenter__(self) -> Cursor:
        return self

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        await self._connection.lock_for(sql)
        self._cursor.execute(sql, () if parameters is None else parameters)
        return self

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        await self._connection.lock_for(sql)
        self._cursor.executemany(sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid


class Connection:
    def __init__(self, sqlite: sqlite3.Connection) -> None:
        self.sqlite = sqlite
        # What SQLAlchemy's adapter reads to tell an open connection from a closed one.
        self._connection: sqlite3.Connection | None = sqlite

    @property
    def isolation_level(self) -> str | None:
        return self.sqlite.isolation_level

    def cursor(self) -> Cursor:
        return Cursor(self)

    async def lock_for(self, sql: str) -> None:
        """Before a statement that writes, outside a transaction: take the write lock, off the
        loop (it may wait for another writer)."""
        if not self.sqlite.in_transaction and not sql.lstrip()[:6].lower().startswith(_READS):
            await asyncio.to_thread(self.sqlite.execute, "BEGIN IMMEDIATE")

    async def commit(self) -> None:
        if self.sqlite.in_transaction:
            await asyncio.to_thread(self.sqlite.commit)

    async def rollback(self) -> None:
        self.sqlite.rollback()

    async def close(self) -> None:
        self.stop()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self.sqlite.create_function(*args, **kwargs)

    def stop(self) -> None:
        """Close at once (also how SQLAlchemy terminates a connection it gave up on)."""
        if self._connection is not None:
            self._connection = None
            self.sqlite.close()


def connector(path: str) -> Callable[[], Awaitable[Connection]]:
    """The ``async_creator`` of an engine on the SQLite database at ``path``."""

    async def connect() -> Connection:
        # Used from the loop's thread and, for BEGIN and COMMIT, a worker's: never two at once.
        return Connection(sqlite3.connect(path, check_same_thread=False))

    return connect
