"""Run Alembic migrations from code (``lamplighter db upgrade`` and the server's start).

On PostgreSQL every migration runs with a short ``lock_timeout`` (``env.py``): a DDL statement
that has to wait for a lock (behind a long query, say) gives up after ``LOCK_TIMEOUT`` instead of
queueing every later query on that table behind it, which would stall a live service. The
migration's transaction rolls back and :func:`upgrade` tries again a few times, backing off.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_TIMEOUT = "5s"
LOCK_RETRIES = 3
# PostgreSQL's SQLSTATE for "lock_not_available": lock_timeout ran out.
_LOCK_NOT_AVAILABLE = "55P03"

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
