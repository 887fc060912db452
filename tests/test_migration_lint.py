"""Migrations are safe to run on a live PostgreSQL database: the lint (store/lint.py) passes on
every migration, catches each unsafe operation it knows, and lock_timeout really bounds the wait
for a lock."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from textwrap import dedent

import asyncpg
import pytest

from lamplighter.store import migrate
from lamplighter.store.lint import Finding, lint_environment, lint_migrations, lint_source
from lamplighter.store.models import Base
from tests.conftest import POSTGRES_URL, _postgres_available

# Findings in migrations that ran before the lint existed, waived with the reason. Each entry is
# (revision, rule): "why it was safe then". None of 0001-0011 breaks a rule today (their indexes
# are on tables they create, their NOT NULL columns have server defaults), so it is empty; a stale
# entry fails the test below, so the list never outlives its reason.
ALLOWED: dict[tuple[str, str], str] = {}


def findings(source: str) -> list[Finding]:
    return lint_source(dedent(source), "synthetic.py", Base.metadata)


def rules(source: str) -> list[str]:
    return [finding.rule for finding in findings(source)]


HEADER = """
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "0011"
"""


def test_every_migration_is_safe_on_a_live_database() -> None:
    found = list(lint_migrations(migrate.MIGRATIONS, Base.metadata))
    unwaived = [f for f in found if (f.revision, f.rule) not in ALLOWED]
    assert not unwaived, "unsafe migration operations:\n" + "\n".join(map(str, unwaived))
    stale = set(ALLOWED) - {(f.revision, f.rule) for f in found}
    assert not stale, f"allow-list entries no migration needs any more: {stale}"


def test_an_index_on_an_existing_table_must_be_built_concurrently() -> None:
    assert rules(HEADER + 'def upgrade():\n    op.create_index("ix", "messages", ["role"])') == [
        "index-not-concurrent"
    ]
    batch = """
    def upgrade():
        with op.batch_alter_table("usage") as batch:
            batch.create_index("ix_usage_model", ["model"])
    """
    assert rules(HEADER + dedent(batch)) == ["index-not-concurrent"]


def test_a_concurrent_index_must_be_built_outside_the_transaction() -> None:
    inside = """
    def upgrade():
        op.create_index("ix", "messages", ["role"], postgresql_concurrently=True)
    """
    assert rules(HEADER + dedent(inside)) == ["concurrent-in-transaction"]
    outside = """
    def upgrade():
        with op.get_context().autocommit_block():
            op.create_index("ix", "messages", ["role"], postgresql_concurrently=True)
    """
    assert rules(HEADER + dedent(outside)) == []


def test_indexes_of_a_table_made_in_the_same_migration_are_fine() -> None:
    source = """
    def upgrade():
        op.create_table("things", sa.Column("id", sa.Uuid(), primary_key=True))
        op.create_index("ix_things", "things", ["id"])
        with op.batch_alter_table("things") as batch:
            batch.add_column(sa.Column("n", sa.Integer(), nullable=False))
        op.execute("CREATE INDEX ix_things_n ON things (n)")
    """
    assert rules(HEADER + dedent(source)) == []


def test_a_not_null_column_needs_a_server_default() -> None:
    bad = """
    def upgrade():
        with op.batch_alter_table("users") as batch:
            batch.add_column(sa.Column("region", sa.String(8), nullable=False))
        op.add_column("messages", sa.Column("lang", sa.String(8), nullable=False))
    """
    assert rules(HEADER + dedent(bad)) == ["not-null-without-default"] * 2
    good = """
    def upgrade():
        op.add_column(
            "users", sa.Column("region", sa.String(8), nullable=False, server_default="eu")
        )
        op.add_column("users", sa.Column("note", sa.Text(), nullable=True))
    """
    assert rules(HEADER + dedent(good)) == []


def test_a_volatile_default_rewrites_the_table() -> None:
    source = """
    def upgrade():
        op.add_column("users", sa.Column("salt", sa.Uuid(), nullable=False,
                      server_default=sa.text("gen_random_uuid()")))
    """
    assert rules(HEADER + dedent(source)) == ["volatile-default"]


def test_type_changes_renames_and_set_not_null_are_flagged() -> None:
    source = """
    def upgrade():
        op.alter_column("messages", "depth", type_=sa.BigInteger())
        with op.batch_alter_table("users") as batch:
            batch.alter_column("plan", nullable=False)
            batch.alter_column("email", new_column_name="address")
        op.rename_table("ratings", "thumbs")
    """
    assert rules(HEADER + dedent(source)) == ["type-change", "set-not-null", "rename", "rename"]


def test_drops_of_what_the_code_uses_are_refused_and_others_need_a_mark() -> None:
    in_use = """
    def upgrade():
        op.drop_column("messages", "author")
        op.drop_table("ratings")
    """
    assert rules(HEADER + dedent(in_use)) == ["drop-in-use", "drop-in-use"]
    unmarked = """
    def upgrade():
        with op.batch_alter_table("users") as batch:
            batch.drop_column("legacy_flag")
    """
    assert rules(HEADER + dedent(unmarked)) == ["drop"]
    marked = """
    def upgrade():
        with op.batch_alter_table("users") as batch:
            # migration-lint: allow drop (no release since 0.3 reads legacy_flag)
            batch.drop_column("legacy_flag")
        op.drop_table("old_things")  # migration-lint: allow drop (contract of 0009)
    """
    assert rules(HEADER + dedent(marked)) == []


def test_constraints_on_existing_tables_must_not_validate_in_place() -> None:
    source = """
    def upgrade():
        op.create_foreign_key("fk", "usage", "plans", ["plan"], ["name"])
        op.create_unique_constraint("uq", "users", ["email", "plan"])
        op.create_foreign_key(
            "fk2", "usage", "plans", ["plan"], ["name"], postgresql_not_valid=True
        )
    """
    assert rules(HEADER + dedent(source)) == ["constraint-on-existing"] * 2


def test_raw_sql_is_read_too() -> None:
    source = """
    def upgrade():
        op.execute("CREATE INDEX ix_m ON messages (role)")
        op.execute("CREATE INDEX CONCURRENTLY ix_n ON messages (model)")
        op.execute("SET lock_timeout = 0")
    """
    assert rules(HEADER + dedent(source)) == ["raw-index", "lock-timeout-disabled"]


def test_findings_name_the_line_and_only_upgrade_is_read() -> None:
    source = HEADER + dedent("""
    def upgrade():
        pass

    def downgrade():
        op.drop_column("users", "plan")
        op.create_index("ix", "messages", ["role"])
    """)
    assert findings(source) == []
    bad = findings(HEADER + 'def upgrade():\n    op.drop_table("users")\n')
    assert bad[0].line == 8
    assert bad[0].revision == "9999"
    assert str(bad[0]).startswith("synthetic.py:8: drop-in-use")


def test_the_environment_must_set_a_lock_timeout() -> None:
    assert lint_environment((migrate.MIGRATIONS / "env.py").read_text()) == []
    assert [f.rule for f in lint_environment("context.configure(connection=connection)")] == [
        "no-lock-timeout"
    ]


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    name = f"lamplighter_lint_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    asyncio.run(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.postgres
def test_a_migration_gives_up_waiting_for_a_lock_instead_of_stalling(
    empty_postgres: str,
) -> None:
    """A long transaction holds a lock on users; the next migration (0010 alters users) waits
    lock_timeout, retries, then fails, instead of queueing every query on users behind it."""
    migrate.upgrade(empty_postgres, "0009")
    plain = empty_postgres.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def hold_and_migrate() -> float:
        holder = await asyncpg.connect(plain)
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE users IN ACCESS SHARE MODE")
                started = time.perf_counter()
                with pytest.raises(Exception) as raised:
                    await asyncio.to_thread(
                        migrate.upgrade, empty_postgres, "0010", lock_timeout="100ms", retries=1
                    )
                assert migrate.lock_timed_out(raised.value)
                return time.perf_counter() - started
        finally:
            await holder.close()

    waited = asyncio.run(hold_and_migrate())
    assert waited < 5  # 100 ms, a 1 s back-off, 100 ms: not forever
    migrate.upgrade(empty_postgres)  # with the lock gone it goes through
