"""Schema changes on a live PostgreSQL database: clients notice nothing.

A replica serves a steady load while a test-only chain of migrations runs on top of the
project's own, the way a release changes a busy table: expand (a nullable column and an index
built concurrently on ``usage``, which every answer writes, here with 200,000 rows of history),
migrate (a backfill in batches, each its own transaction), then contract (both dropped again,
once no code could use them). The running code is the release before the change, as during a
rollout. And replicas that start together migrate in turn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from textwrap import dedent

from alembic import command
from alembic.script import ScriptDirectory

from lamplighter.settings import async_database_url
from lamplighter.store import migrate
from lamplighter.store.lint import lint_source
from lamplighter.store.models import Base
from tests.fleet import (
    ROOMY,
    Gateway,
    Load,
    SimBackend,
    fresh_database,
    ledger_totals,
    needs_redis,
    new_users,
    run_sql,
    store_plans,
)

EXPAND = '''
"""expand: where billing will count tokens, not used by any code yet"""

import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"


def upgrade() -> None:
    op.add_column("usage", sa.Column("billed_tokens", sa.BigInteger(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_usage_billed_tokens", "usage", ["billed_tokens"], postgresql_concurrently=True
        )
'''
BACKFILL = '''
"""migrate: fill the new column in small batches, each its own transaction"""

import sqlalchemy as sa
from alembic import op

revision = "9002"
down_revision = "9001"
BATCH = 5000


def upgrade() -> None:
    with op.get_context().autocommit_block():
        while True:
            done = op.get_bind().execute(
                sa.text(
                    "UPDATE usage SET billed_tokens = prompt_tokens + completion_tokens "
                    "WHERE id IN (SELECT id FROM usage WHERE billed_tokens IS NULL LIMIT :n)"
                ),
                {{"n": BATCH}},
            )
            if done.rowcount < BATCH:
                break
'''
HISTORY = 200_000
CONTRACT = '''
"""contract: the experiment is over; no released code reads the column"""

from alembic import op

revision = "9003"
down_revision = "9002"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(  # migration-lint: allow drop (the contract step of this test chain)
            "ix_usage_billed_tokens", "usage", postgresql_concurrently=True
        )
    op.drop_column("usage", "billed_tokens")  # migration-lint: allow drop (as above)
'''


@needs_redis
def test_expand_migrate_contract_on_a_live_database_fails_no_request(tmp_path: Path) -> None:
    with fresh_database() as url:
        store_plans(url, ROOMY)
        users = new_users(url, "roomy", "roomy", admin=True)
        # A ledger with some history, so that the index build and the backfill take a while.
        history = (
            "WITH made AS (INSERT INTO usage (user_id, model, prompt_tokens, completion_tokens, "
            "latency_ms, finish_reason, created_at, plan) SELECT $1, 'history', 10, 20, 100, "
            "'stop', now() - g * interval '1 second', 'roomy' FROM generate_series(1, $2) g "
            "RETURNING 1) SELECT count(*) FROM made"
        )
        assert run_sql(url, history, users[-1].id, HISTORY) == HISTORY
        config = migrate.alembic_config(async_database_url(url))
        head = ScriptDirectory.from_config(config).get_current_head()
        versions = tmp_path / "versions"
        versions.mkdir()
        for name, source in (("9001_expand", EXPAND), ("9002_backfill", BACKFILL)):
            (versions / f"{name}.py").write_text(source.format(head=head))
        (versions / "9003_contract.py").write_text(CONTRACT)
        for path in sorted(versions.glob("*.py")):  # the chain passes the project's own lint
            assert lint_source(path.read_text(), str(path), Base.metadata) == []
        config.set_main_option("path_separator", "os")
        config.set_main_option(
            "version_locations",
            os.pathsep.join([str(migrate.MIGRATIONS / "versions"), str(versions)]),
        )

        sim = SimBackend("sim", tmp_path, time_scale=4)
        sim.start()
        settings = tmp_path / "lamplighter.toml"
        settings.write_text(ROOMY + sim.table(f"sim-{tmp_path.name[-12:]}"))
        replica = Gateway("replica-0", tmp_path, database_url=url, config=settings)
        try:
            sim.wait_up()
            replica.start()
            replica.wait_ready()
            load = Load(replica.url, [user.key for user in users[:-1]], workers=4)
            load.start()
            try:
                load.wait_for_requests(10)
                steps = {}
                for step in ("9001", "9002", "9003"):
                    began, before = time.monotonic(), load.requests
                    command.upgrade(config, step)
                    took = time.monotonic() - began
                    load.wait_for_requests(8)
                    steps[step] = (took, load.requests - before)
            finally:
                load.stop()
            assert replica.stop() in (0, -15)
        finally:
            replica.kill()
            sim.kill()

        assert not load.failures, load.failures[:5]
        rows, prompt, completion, _ = ledger_totals(url, [user.id for user in users[:-1]])
        assert (rows, prompt, completion) == (load.ok, load.prompt_tokens, load.completion_tokens)
        assert run_sql(url, "SELECT version_num FROM alembic_version") == "9003"
        column = "SELECT count(*) FROM information_schema.columns WHERE column_name = $1"
        assert run_sql(url, column, "billed_tokens") == 0
        print(
            f"\nlive migration: {load.ok} requests, 0 failed; "
            + ", ".join(f"{k} took {t:.2f} s ({n} answers then)" for k, (t, n) in steps.items())
        )


def test_replicas_starting_together_migrate_one_at_a_time(tmp_path: Path) -> None:
    """Four processes upgrade an empty database at once: one applies every migration, the
    others wait for it and find nothing left to do. (Without the advisory lock, three of them
    fail on tables and revisions the first one is creating.)"""
    with fresh_database(migrated=False) as url:
        code = dedent(
            """
            import logging, sys
            logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
            from lamplighter.store import migrate
            migrate.upgrade(sys.argv[1])
            """
        )
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", code, async_database_url(url)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
        applied = [output.count("Running upgrade") for output in outputs]
        revisions = len(
            list(ScriptDirectory.from_config(migrate.alembic_config(url)).walk_revisions())
        )
        assert sorted(applied) == [0, 0, 0, revisions], outputs
        head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
        assert run_sql(url, "SELECT version_num FROM alembic_version") == head
