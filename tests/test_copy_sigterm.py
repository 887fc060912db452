"""``lamplighter db copy`` stopped with SIGTERM (what timeout, systemd, ``docker stop`` and a
Kubernetes Job's deadline send) cleans up as Ctrl-C does: the change-log triggers and table leave
the live SQLite database, and ``READ_ONLY`` goes, so the server takes writes again."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from lamplighter import readonly
from lamplighter.store import migrate
from tests.conftest import new_postgres_database
from tests.fleet import wait_for
from tests.test_db_copy import seeded_sqlite

pytestmark = pytest.mark.postgres


@pytest.fixture
def target() -> Iterator[str]:
    """An empty PostgreSQL database, migrated (so that a test can lock one of its tables)."""
    with new_postgres_database() as url:
        migrate.upgrade(url)
        yield url.replace("postgresql+asyncpg://", "postgresql://", 1)


def start_copy(data_dir: Path, target: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
    env["LAMPLIGHTER_DATA_DIR"] = str(data_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "lamplighter", "db", "copy", "--to", target, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def capture_objects(data_dir: Path) -> list[str]:
    """The change log and triggers ``db copy`` put on the source."""
    with sqlite3.connect(data_dir / "lamplighter.db") as sqlite:
        found = sqlite.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '\\_lamplighter\\_copy%' ESCAPE '\\'"
        )
        return [name for (name,) in found]


def terminated(copying: subprocess.Popen[str]) -> str:
    """Send SIGTERM once, and the command's error output once it has ended."""
    copying.send_signal(signal.SIGTERM)
    _, err = copying.communicate(timeout=60)
    return err


def test_sigterm_during_the_bulk_copy_removes_the_change_log_and_resume_finishes(
    tmp_path: Path, target: str
) -> None:
    seeded_sqlite(tmp_path, users=1, conversations=2, depth=4)
    runner = asyncio.Runner()
    # Holding a lock on a table that is copied after others keeps the copy mid-way, its
    # triggers installed and some tables written, for as long as the test needs.
    holder = runner.run(asyncpg.connect(target))
    copying = None
    try:
        runner.run(holder.execute("BEGIN; LOCK TABLE invites IN SHARE MODE"))
        copying = start_copy(tmp_path, target, "--offline", "--batch", "1")
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"  # live, unlike pg_stat_*
        wait_for(
            lambda: runner.run(holder.fetchval(waiting)) > 0 or copying.poll() is not None,
            60,
            "the copy waits for the locked table",
        )
        assert copying.poll() is None, copying.communicate()
        assert capture_objects(tmp_path)  # the copy is under way
        assert runner.run(holder.fetchval("SELECT count(*) FROM audit_log")) == 1  # copied
        err = terminated(copying)
    finally:
        if copying is not None and copying.poll() is None:
            copying.kill()
            copying.communicate()
        runner.run(holder.close())
        runner.close()
    assert copying.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert capture_objects(tmp_path) == []
    assert readonly.read_flag(tmp_path) is None
    resumed = start_copy(tmp_path, target, "--offline", "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "verified" in out


def test_sigterm_during_the_switch_over_lifts_read_only(tmp_path: Path, target: str) -> None:
    seeded_sqlite(tmp_path, users=1, conversations=1, depth=2)
    # No server runs to acknowledge read-only mode: the copy waits in the switch-over, read-only.
    copying = start_copy(tmp_path, target, "--drain-timeout", "600")
    try:
        wait_for(
            lambda: readonly.read_flag(tmp_path) is not None or copying.poll() is not None,
            60,
            "the copy makes the store read-only",
        )
        assert copying.poll() is None, copying.communicate()
        assert capture_objects(tmp_path)
        err = terminated(copying)
    finally:
        if copying.poll() is None:
            copying.kill()
            copying.communicate()
    assert copying.returncode == 128 + signal.SIGTERM, err
    assert "read-only: waiting" in err and "stopped by SIGTERM" in err
    assert readonly.read_flag(tmp_path) is None
    assert not (tmp_path / readonly.FLAG).exists()
    assert capture_objects(tmp_path) == []
