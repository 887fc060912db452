"""The PostgreSQL side of ``db copy``: bulk ``COPY``, upserts, deletes, ordered reads, and the
foreign keys set aside during the bulk copy. Over two raw asyncpg connections: SQLAlchemy's
layer would only slow a copy down, and ``COPY`` needs the driver itself.

Writing rows with ``copy_records_to_table`` (binary ``COPY``) measured about 1.6 times as fast
as ``executemany`` of ``INSERT`` here; without the foreign keys, checked row by row, a bulk copy
runs about four times as fast, and adding them back (which checks every row at once) takes a
fraction of that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from lamplighter.settings import async_database_url
from lamplighter.store.rows import PG_ARRAY, Kind, TableSpec

# Where the target keeps the foreign keys set aside during the bulk copy.
SET_ASIDE = "_lamplighter_copy_foreign_keys"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresTarget:
    """The PostgreSQL side, over two raw asyncpg connections: one writes, one streams reads."""

    def __init__(self, url: str) -> None:
        self.url = make_url(async_database_url(url)).set(drivername="postgresql")
        self._write: asyncpg.Connection | None = None
        self._read: asyncpg.Connection | None = None

    async def open(self) -> None:
        dsn = self.url.render_as_string(hide_password=False)
        self._write = await asyncpg.connect(dsn)
        self._read = await asyncpg.connect(dsn)

    async def close(self) -> None:
        for conn in (self._write, self._read):
            if conn is not None:
                await conn.close()

    @property
    def write(self) -> asyncpg.Connection:
        if self._write is None:
            raise RuntimeError("the target is not open")
        return self._write

    @property
    def read(self) -> asyncpg.Connection:
        if self._read is None:
            raise RuntimeError("the target is not open")
        return self._read

    async def columns(self, table: str) -> list[str]:
        rows = await self.write.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
        return [row[0] for row in rows]

    async def count(self, spec: TableSpec, *, missing: int | None = None) -> int:
        """Rows in the table; ``missing`` if it does not exist (``None``: an error)."""
        if (
            missing is not None
            and await self.write.fetchval("SELECT to_regclass($1)", _q(spec.name)) is None
        ):
            return missing
        return int(await self.write.fetchval(f"SELECT count(*) FROM {_q(spec.name)}"))

    async def insert(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            await self.write.copy_records_to_table(spec.name, records=rows, columns=spec.columns)

    async def upsert(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert or rewrite rows in one statement (so that rows pointing at each other, a
        message and its parent, may come in any order): ``COPY`` into a temporary table, then
        ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``."""
        if not rows:
            return
        stage = _q(f"_lamplighter_stage_{spec.name}")
        columns = ", ".join(map(_q, spec.columns))
        others = [(c, k) for c, k in zip(spec.columns, spec.kinds, strict=True) if c != spec.pk]
        assignments = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c, _ in others)

        def compared(table: str, column: str, kind: Kind) -> str:
            return f"{table}.{_q(column)}" + ("::jsonb" if kind is Kind.JSON else "")

        # Only rows that differ are rewritten: no needless bloat, and append-only tables (whose
        # triggers refuse any UPDATE) accept rows they already hold. json has no equality.
        differs = " OR ".join(
            f"{compared(_q(spec.name), c, k)} IS DISTINCT FROM {compared('EXCLUDED', c, k)}"
            for c, k in others
        )
        async with self.write.transaction():
            await self.write.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {_q(spec.name)}) "
                "ON COMMIT DELETE ROWS"
            )
            await self.write.copy_records_to_table(
                f"_lamplighter_stage_{spec.name}", records=rows, columns=spec.columns
            )
            await self.write.execute(
                f"INSERT INTO {_q(spec.name)} ({columns}) SELECT {columns} FROM {stage} "
                f"ON CONFLICT ({_q(spec.pk)}) DO UPDATE SET {assignments} WHERE {differs}"
            )

    async def delete(self, spec: TableSpec, keys: Sequence[Any]) -> None:
        if keys:
            array = PG_ARRAY[spec.pk_kind]
            await self.write.execute(
                f"DELETE FROM {_q(spec.name)} WHERE {_q(spec.pk)} = ANY($1::{array})", list(keys)
            )

    async def rows(self, spec: TableSpec, keys: Sequence[Any]) -> list[asyncpg.Record]:
        columns = ", ".join(map(_q, spec.columns))
        rows: list[asyncpg.Record] = await self.write.fetch(
            f"SELECT {columns} FROM {_q(spec.name)} "
            f"WHERE {_q(spec.pk)} = ANY($1::{PG_ARRAY[spec.pk_kind]})",
            list(keys),
        )
        return rows

    async def stream(
        self, spec: TableSpec, batch: int, *, keys_only: bool = False
    ) -> AsyncIterator[asyncpg.Record]:
        """Every row in the byte order of the primary key (``COLLATE "C"`` for text, as
        SQLite sorts), from one snapshot."""
        columns = _q(spec.pk) if keys_only else ", ".join(map(_q, spec.columns))
        order = _q(spec.pk) + (' COLLATE "C"' if spec.pk_kind is Kind.STR else "")
        sql = f"SELECT {columns} FROM {_q(spec.name)} ORDER BY {order}"
        async with self.read.transaction(isolation="repeatable_read", readonly=True):
            async for record in self.read.cursor(sql, prefetch=batch):
                yield record

    async def drop_foreign_keys(self) -> None:
        """Set the foreign keys aside for the bulk copy, which runs four times faster without a
        lookup per row and key; the definitions are kept in the target until restored."""
        async with self.write.transaction():
            await self.write.execute(
                f"CREATE TABLE IF NOT EXISTS {SET_ASIDE} (tbl text NOT NULL, name text NOT NULL, "
                "definition text NOT NULL, PRIMARY KEY (tbl, name))"
            )
            found = await self.write.fetch(
                "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) "
                "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                "WHERE c.contype = 'f' AND n.nspname = current_schema()"
            )
            for table, name, definition in found:
                await self.write.execute(
                    f"INSERT INTO {SET_ASIDE} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    table,
                    name,
                    definition,
                )
                await self.write.execute(f"ALTER TABLE {table} DROP CONSTRAINT {_q(name)}")

    async def restore_foreign_keys(self) -> int:
        """Add back the foreign keys set aside (by this run or an interrupted one); adding one
        checks every row against it. Returns how many were restored."""
        exists = await self.write.fetchval("SELECT to_regclass($1)", SET_ASIDE)
        if exists is None:
            return 0
        async with self.write.transaction():
            found = await self.write.fetch(f"SELECT tbl, name, definition FROM {SET_ASIDE}")
            for table, name, definition in found:
                await self.write.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {_q(name)} {definition}"
                )
            await self.write.execute(f"DROP TABLE {SET_ASIDE}")
        return len(found)

    async def bump_sequences(self, tables: Sequence[TableSpec]) -> None:
        """Move each serial primary key's sequence past the highest copied id."""
        for spec in tables:
            if spec.pk_kind is not Kind.INT:
                continue
            sequence = await self.write.fetchval(
                "SELECT pg_get_serial_sequence($1, $2)", _q(spec.name), spec.pk
            )
            if sequence is not None:
                await self.write.execute(
                    f"SELECT setval($1::regclass, coalesce(max({_q(spec.pk)}), 1), "
                    f"max({_q(spec.pk)}) IS NOT NULL) FROM {_q(spec.name)}",
                    sequence,
                )
