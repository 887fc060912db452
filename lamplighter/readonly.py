"""Read-only mode: while ``lamplighter db copy`` moves the store, the server stops writing.

The mover writes ``DATA_DIR/READ_ONLY``, a small JSON file that names the database it freezes
and carries a random token. A server whose database is that one answers every request that may
write (POST, PUT, PATCH, DELETE) with 503, ``retry-after`` and the code ``read_only``; reads go on.
Requests that were already running when the flag appeared run to the end, streams included:
once none is left, the server writes ``DATA_DIR/READ_ONLY.drained`` holding the same token, which
tells the mover that no more writes are coming. Deleting ``READ_ONLY`` ends read-only mode.

A server on another database (the new one, started from the same data directory) ignores the
flag, so the switch-over is: the mover finishes, the server restarts on the new URL. Once the
mover has verified the new database it marks the flag ``moved_to``: the store has left for good,
so the old server's writes are refused as such (not "for a few seconds") and its ``/readyz``
answers 503, which takes it out of a load balancer until it is restarted on the new URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from lamplighter.exceptions import APIError
from lamplighter.settings import async_database_url

FLAG = "READ_ONLY"
DRAINED = "READ_ONLY.drained"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a refused client is told to wait: about the length of a switch-over.
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Flag:
    database: str
    token: str
    since: str
    reason: str
    # Set once `db copy` verified the new database: where the store went for good (its URL,
    # the password masked). Empty while the move may still be rolled back.
    moved_to: str = ""


def same_database(a: str, b: str) -> bool:
    """Whether two SQLAlchemy URLs name the same database (SQLite: the same file)."""
    a, b = async_database_url(a), async_database_url(b)
    prefix = "sqlite+aiosqlite:///"
    if a.startswith(prefix) and b.startswith(prefix):
        return Path(a[len(prefix) :]).resolve() == Path(b[len(prefix) :]).resolve()
    return a == b


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def freeze(data_dir: Path, database: str, reason: str) -> Flag:
    """Put the server on ``database`` into read-only mode; returns the flag written."""
    flag = Flag(
        database=database,
        token=secrets.token_hex(8),
        since=datetime.now(UTC).isoformat(),
        reason=reason,
    )
    (data_dir / DRAINED).unlink(missing_ok=True)
    _write_atomically(data_dir / FLAG, flag.__dict__)
    return flag


def settle(data_dir: Path, flag: Flag, moved_to: str) -> Flag:
    """The switch-over is done: ``flag`` stays, saying that the store moved to ``moved_to`` (a
    URL without its password). Same token: the server's acknowledgement still holds."""
    moved = replace(flag, moved_to=moved_to)
    _write_atomically(data_dir / FLAG, moved.__dict__)
    return moved


def thaw(data_dir: Path, flag: Flag | None = None) -> None:
    """End read-only mode (only the given flag's, if one is given)."""
    found = read_flag(data_dir)
    if flag is not None and found is not None and found.token != flag.token:
        return
    (data_dir / FLAG).unlink(missing_ok=True)


def read_flag(data_dir: Path) -> Flag | None:
    try:
        data = json.loads((data_dir / FLAG).read_text())
        return Flag(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # Unreadable: still a flag. Refusing writes is the safe side.
        return Flag(database="", token="", since="", reason="unreadable READ_ONLY file")


def applies(flag: Flag | None, database_url: str) -> bool:
    """Whether a flag freezes ``database_url`` (an unreadable flag freezes every database)."""
    return flag is not None and (not flag.database or same_database(flag.database, database_url))


def moved(data_dir: Path, database_url: str) -> Flag | None:
    """The flag, if `db copy` moved the store of ``database_url`` away for good."""
    flag = read_flag(data_dir)
    return flag if flag is not None and flag.moved_to and applies(flag, database_url) else None


def drained(data_dir: Path, flag: Flag) -> bool:
    """Whether a server has acknowledged ``flag`` with no write left running."""
    try:
        data = json.loads((data_dir / DRAINED).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(data, dict) and data.get("token") == flag.token


MOVED = (
    "This Lamplighter deployment has moved to a new database. This instance is still on the old "
    "one, which takes no more writes: it must be restarted against the new database."
)


def _refusal(flag: Flag) -> APIError:
    # retry-after either way: once moved, a load balancer takes this instance out (its /readyz
    # answers 503), so a retry a few seconds later reaches one on the new database.
    message = (
        MOVED
        if flag.moved_to
        else "Lamplighter is read-only for a few seconds while its database moves. "
        "Try again shortly."
    )
    error = APIError(
        message,
        code="read_only",
        headers={
            "retry-after": str(RETRY_AFTER_S),
            "retry-after-ms": str(RETRY_AFTER_S * 1000),
        },
    )
    error.status_code = 503
    return error


class ReadOnly:
    """ASGI middleware: refuses writes while the flag names this server's database, counts the
    writes still running, and acknowledges the flag once they are done."""

    def __init__(
        self, app: ASGIApp, *, data_dir: Path, database_url: str, poll_s: float = 0.05
    ) -> None:
        self.app = app
        self.data_dir = data_dir
        self.database_url = database_url
        self.poll_s = poll_s
        self.writing = 0
        self._seen: tuple[int, int] | None = None
        self._flag: Flag | None = None
        self._acknowledged = ""

    def active(self) -> Flag | None:
        """The flag, if there is one and it names this server's database. A ``stat`` a call; the
        file is read again only when it changes."""
        try:
            stat = os.stat(self.data_dir / FLAG)
        except FileNotFoundError:
            self._seen = self._flag = None
            return None
        key = (stat.st_ino, stat.st_mtime_ns)
        if key != self._seen:
            flag = read_flag(self.data_dir)
            self._seen, self._flag = key, flag if applies(flag, self.database_url) else None
        return self._flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            watcher = asyncio.create_task(self._watch())
            try:
                await self.app(scope, receive, send)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            return
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        flag = self.active()
        if flag is not None:
            error = _refusal(flag)
            body = json.dumps(error.body()).encode()
            headers = [(b"content-type", b"application/json"), *(
                (name.encode(), value.encode()) for name, value in error.headers.items()
            )]  # fmt: skip
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.writing += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.writing -= 1

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            # An unwritable data directory for a moment: try again at the next tick.
            with contextlib.suppress(OSError):
                self._acknowledge()

    def _acknowledge(self) -> None:
        flag = self.active()
        if flag is not None and self.writing == 0 and flag.token != self._acknowledged:
            _write_atomically(self.data_dir / DRAINED, {"token": flag.token, "pid": os.getpid()})
            self._acknowledged = flag.token
        elif flag is None and self._acknowledged:
            (self.data_dir / DRAINED).unlink(missing_ok=True)
            self._acknowledged = ""
