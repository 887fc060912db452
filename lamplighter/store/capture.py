"""The SQLite side of ``db copy``: snapshots to read from, and a log of every row that changes.

Change capture: triggers on every table append ``(table, primary key)`` to ``CHANGES`` on each
insert, update and delete, whoever makes it (the running server, a CLI command, a foreign key's
cascade). SQLite has one writer at a time, so the log's ``seq`` follows commit order: a snapshot
that sees ``seq`` up to S holds every change up to S and none after. The copier reads a table
from one snapshot, then re-reads only the rows logged after it. It drops the triggers and the log
when it is done.

A snapshot is a read transaction: in WAL mode it sees one committed state for as long as it is
open and never blocks the server's writes.

Every method blocks: the copier calls them from a thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamplighter.store.rows import TableSpec

CHANGES = "_lamplighter_copy_changes"
_TRIGGER = "_lamplighter_copy_"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteSource:
    def __init__(self, path: Path, specs: Sequence[TableSpec]) -> None:
        if not path.exists():
            raise FileNotFoundError(f"no SQLite database at {path}")
        self.path = path
        self.specs = list(specs)
        # Autocommit mode: transactions are exactly the BEGIN and COMMIT issued here.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute("PRAGMA journal_mode=WAL")

    def close(self) -> None:
        self.conn.close()

    def revision(self) -> str | None:
        try:
            found = self.conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return None
        return None if found is None else str(found[0])

    def columns(self, table: str) -> list[str]:
        return [row[1] for row in self.conn.execute(f"PRAGMA table_info({_q(table)})")]

    def tables(self) -> set[str]:
        found = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in found if not row[0].startswith("sqlite_")}

    # --- change capture ---------------------------------------------------------------------

    def install_capture(self) -> None:
        """Create the log and the triggers (idempotent), and empty the log of an earlier run."""
        statements = [
            f"CREATE TABLE IF NOT EXISTS {CHANGES} "
            "(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, pk NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {CHANGES}_tbl_seq ON {CHANGES} (tbl, seq)",
            f"DELETE FROM {CHANGES}",
        ]
        for spec in self.specs:
            table, pk, name = _q(spec.name), _q(spec.pk), spec.name.replace("'", "''")
            log = f"INSERT INTO {CHANGES} (tbl, pk)"
            statements += [
                f"CREATE TRIGGER IF NOT EXISTS {_TRIGGER}{spec.name}_insert AFTER INSERT ON "
                f"{table} BEGIN {log} VALUES ('{name}', NEW.{pk}); END",
                f"CREATE TRIGGER IF NOT EXISTS {_TRIGGER}{spec.name}_update AFTER UPDATE ON "
                f"{table} BEGIN {log} VALUES ('{name}', OLD.{pk}); "
                f"{log} SELECT '{name}', NEW.{pk} WHERE NEW.{pk} IS NOT OLD.{pk}; END",
                f"CREATE TRIGGER IF NOT EXISTS {_TRIGGER}{spec.name}_delete AFTER DELETE ON "
                f"{table} BEGIN {log} VALUES ('{name}', OLD.{pk}); END",
            ]
        self._write(statements)

    def remove_capture(self) -> None:
        statements = [
            f"DROP TRIGGER IF EXISTS {_TRIGGER}{spec.name}_{event}"
            for spec in self.specs
            for event in ("insert", "update", "delete")
        ]
        self._write([*statements, f"DROP TABLE IF EXISTS {CHANGES}"])

    def _write(self, statements: list[str]) -> None:
        # BEGIN IMMEDIATE takes the write lock at once, waiting (busy_timeout) for the server's.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                self.conn.execute(statement)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def last_change(self) -> int:
        """The newest log entry's ``seq`` in the current snapshot (or now, outside one)."""
        return int(self.conn.execute(f"SELECT coalesce(max(seq), 0) FROM {CHANGES}").fetchone()[0])

    def changed(self, spec: TableSpec, after: int, upto: int, batch: int) -> list[list[Any]]:
        """The primary keys (as stored) of ``spec``'s rows logged in ``(after, upto]``, in key
        order, in batches. As many as were changed since the last pass: a few seconds' writes."""
        cursor = self.conn.execute(
            f"SELECT DISTINCT pk FROM {CHANGES} WHERE tbl = ? AND seq > ? AND seq <= ? ORDER BY pk",
            (spec.name, after, upto),
        )
        return [[row[0] for row in chunk] for chunk in iter(lambda: cursor.fetchmany(batch), [])]

    def changes_by_table(self, after: int, upto: int) -> dict[str, int]:
        found = self.conn.execute(
            f"SELECT tbl, count(DISTINCT pk) FROM {CHANGES} WHERE seq > ? AND seq <= ? "
            "GROUP BY tbl",
            (after, upto),
        )
        return {str(tbl): int(n) for tbl, n in found}

    # --- snapshots and reads ----------------------------------------------------------------

    def begin(self) -> int:
        """Open a snapshot; returns the last change it holds."""
        self.conn.execute("BEGIN")
        # The first read fixes the snapshot.
        if not self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (CHANGES,)
        ).fetchone():
            return 0  # no capture: a snapshot to read from, nothing more
        return self.last_change()

    def end(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def _select(self, spec: TableSpec) -> str:
        return f"SELECT {', '.join(map(_q, spec.columns))} FROM {_q(spec.name)}"

    def batch_after(self, spec: TableSpec, after: Any, limit: int) -> list[tuple[Any, ...]]:
        """Keyset pagination: the next ``limit`` rows (as stored) with a key above ``after``."""
        where = "" if after is None else f" WHERE {_q(spec.pk)} > ?"
        params: tuple[Any, ...] = () if after is None else (after,)
        sql = f"{self._select(spec)}{where} ORDER BY {_q(spec.pk)} LIMIT ?"
        return self.conn.execute(sql, (*params, limit)).fetchall()

    def rows(self, spec: TableSpec, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows with these stored keys that exist, in key order."""
        marks = ", ".join("?" * len(keys))
        sql = f"{self._select(spec)} WHERE {_q(spec.pk)} IN ({marks}) ORDER BY {_q(spec.pk)}"
        return self.conn.execute(sql, tuple(keys)).fetchall()

    def present(self, spec: TableSpec, keys: Sequence[Any]) -> set[Any]:
        marks = ", ".join("?" * len(keys))
        sql = f"SELECT {_q(spec.pk)} FROM {_q(spec.name)} WHERE {_q(spec.pk)} IN ({marks})"
        return {row[0] for row in self.conn.execute(sql, tuple(keys))}

    def count(self, spec: TableSpec) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {_q(spec.name)}").fetchone()[0])

    def in_progress(self) -> int:
        """Answers being written right now (a server settles them when their stream ends)."""
        sql = "SELECT count(*) FROM messages WHERE status = 'in_progress'"
        return int(self.conn.execute(sql).fetchone()[0])
