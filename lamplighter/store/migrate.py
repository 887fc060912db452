"""Run Alembic migrations from code (``lamplighter db upgrade`` and the server's start).

On PostgreSQL every migration runs with a short ``lock_timeout`` (``env.py``): a DDL statement
that has to wait for a lock (behind a long query, say) gives up after ``LOCK_TIMEOUT`` instead of
queueing every later query on that table behind it, which would stall a live service. The
migration's transaction rolls back and :func:`upgrade` tries again a few times, backing off.

Replicas that start together all migrate at start. On PostgreSQL they take turns: each holds the
advisory lock ``MIGRATION_LOCK`` (:func:`one_at_a_time`, taken in ``env.py``) from before it
reads the database's revision until it is done, so the first applies what is pending and the
others then find the database at the latest revision. (SQLite serves one process.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_TIMEOUT = "5s"
LOCK_RETRIES = 3
# PostgreSQL's SQLSTATE for "lock_not_available": lock_timeout ran out.
_LOCK_NOT_AVAILABLE = "55P03"
# How often a process waiting for another's migrations asks for the advisory lock again.
LOCK_POLL_S = 0.1
# The advisory lock that migrating processes take in turn: any fixed 64-bit key ("lampligh").
MIGRATION_LOCK = 0x6C616D706C696768

log = logging.getLogger(__name__)


def alembic_config(url: str, lock_timeout: str = LOCK_TIMEOUT) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    config.attributes["lock_timeout"] = lock_timeout
    return config


def lock_timed_out(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is PostgreSQL's lock_timeout."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if _LOCK_NOT_AVAILABLE in (
            getattr(found, "sqlstate", None),
            getattr(found, "pgcode", None),
        ):
            return True
        orig = getattr(found, "orig", None)
        found = orig if isinstance(orig, BaseException) else (found.__cause__ or found.__context__)
    return False


@contextlib.contextmanager
def one_at_a_time(connection: Connection) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock ``MIGRATION_LOCK`` on ``connection`` for the block,
    waiting while another process holds it. The lock is the session's: it outlives each
    migration's transaction and ends with the connection if the process dies."""
    if connection.dialect.name != "postgresql":
        yield
        return
    take = f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})"
    if not connection.exec_driver_sql(take).scalar():
        log.info("another process is migrating the database; waiting for it to finish")
        # Asking again and again, with no transaction open in between, rather than blocking in
        # pg_advisory_lock: an index built concurrently waits for every open transaction, and
        # one blocked on the lock its builder holds would be a deadlock.
        while True:
            connection.commit()
            time.sleep(LOCK_POLL_S)
            if connection.exec_driver_sql(take).scalar():
                break
    connection.commit()
    unlock = f"SELECT pg_advisory_unlock({MIGRATION_LOCK})"
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # a broken connection: closing it ends the lock
            connection.rollback()
            connection.exec_driver_sql(unlock)
            connection.commit()
        raise
    connection.commit()
    connection.exec_driver_sql(unlock)
    connection.commit()


def upgrade(
    url: str,
    revision: str = "head",
    *,
    lock_timeout: str = LOCK_TIMEOUT,
    retries: int = LOCK_RETRIES,
) -> None:
    """Migrate the database at ``url`` to ``revision``. Synchronous: it runs its own event
    loop, so call it from a thread when one is already running."""
    for attempt in range(retries + 1):
        try:
            command.upgrade(alembic_config(url, lock_timeout), revision)
            return
        except Exception as exc:
            if attempt == retries or not lock_timed_out(exc):
                raise
            wait = 2.0**attempt
            log.warning(
                "a migration waited %s for a lock and gave up; trying again in %.0f s",
                lock_timeout,
                wait,
            )
            time.sleep(wait)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
