"""Alembic environment: runs migrations over the async engine Lamplighter itself uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from lamplighter.store.database import create_engine
from lamplighter.store.migrate import LOCK_TIMEOUT, one_at_a_time
from lamplighter.store.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    # Replicas starting together take turns (an advisory lock), before the revision is read.
    with one_at_a_time(connection):
        _migrate(connection)


def _migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Online migrations: a statement that waits longer than this for a lock fails (and
        # migrate.upgrade tries again) instead of stalling every query queued behind it.
        timeout = str(context.config.attributes.get("lock_timeout", LOCK_TIMEOUT))
        timeout = timeout.replace("'", "")
        connection.exec_driver_sql(f"SET lock_timeout = '{timeout}'")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(context.config.attributes["database_url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run_async())
