"""Rows as the same values on every database: what ``db copy`` moves and checksums.

Each column of the models has a kind (uuid, datetime, bool, json, int, float, str). A value read
from SQLite (text UUIDs, naive datetimes, 0/1 booleans, JSON as text) or from PostgreSQL (native
types) is normalised to one canonical form, so that a row has the same bytes whichever database
it came from:

- UUID: 32 lowercase hex digits;
- datetime: UTC, ISO 8601 with microseconds (``2026-01-02T03:04:05.000006+00:00``); a naive
  value is UTC (that is how SQLite keeps them);
- JSON: parsed, then written back as text with sorted keys and no spaces;
- booleans, integers, floats and text as JSON writes them; NULL as ``null``.

A row's canonical line is the JSON array of its normalised values; a table's checksum is the
SHA-256 of its lines in primary-key order (byte order, as SQLite and PostgreSQL's ``"C"``
collation sort), with the row count beside it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, MetaData, String, Table, Uuid
from sqlalchemy.types import TypeDecorator, TypeEngine


class Kind(StrEnum):
    UUID = "uuid"
    DATETIME = "datetime"
    BOOL = "bool"
    JSON = "json"
    INT = "int"
    FLOAT = "float"
    STR = "str"


# PostgreSQL's name for an array parameter of each kind of primary key.
PG_ARRAY = {Kind.UUID: "uuid[]", Kind.INT: "bigint[]", Kind.STR: "text[]"}


def kind_of(type_: TypeEngine[Any]) -> Kind:
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    # Order matters: Boolean and DateTime are not Integers, but check the specific ones first.
    for cls, kind in (
        (Uuid, Kind.UUID),
        (DateTime, Kind.DATETIME),
        (Boolean, Kind.BOOL),
        (JSON, Kind.JSON),
        (Integer, Kind.INT),
        (Float, Kind.FLOAT),
        (String, Kind.STR),
    ):
        if isinstance(type_, cls):
            return kind
    raise TypeError(f"no kind for column type {type_!r}")


@dataclass(frozen=True)
class TableSpec:
    """What the copier needs of a table: its columns in a fixed order and their kinds, the
    primary key, and the columns that point at the table itself (a message's parent)."""

    name: str
    columns: tuple[str, ...]
    kinds: tuple[Kind, ...]
    pk: str
    self_refs: tuple[int, ...] = field(default=())

    @cached_property
    def from_sqlite(self) -> tuple[Callable[[Any], Any], ...]:
        return tuple(_FROM_SQLITE[kind] for kind in self.kinds)

    @cached_property
    def normalisers(self) -> tuple[Callable[[Any], Any], ...]:
        return tuple(_NORMALISE[kind] for kind in self.kinds)

    @property
    def pk_index(self) -> int:
        return self.columns.index(self.pk)

    @property
    def pk_kind(self) -> Kind:
        return self.kinds[self.pk_index]

    @classmethod
    def of(cls, table: Table) -> TableSpec:
        pks = list(table.primary_key.columns)
        if len(pks) != 1:
            raise ValueError(f"{table.name}: db copy handles single-column primary keys only")
        columns = tuple(column.name for column in table.columns)
        self_refs = tuple(
            columns.index(fk.parent.name)
            for fk in table.foreign_keys
            if fk.column.table is table and fk.parent.name != pks[0].name
        )
        return cls(
            name=table.name,
            columns=columns,
            kinds=tuple(kind_of(column.type) for column in table.columns),
            pk=pks[0].name,
            self_refs=self_refs,
        )


def specs(metadata: MetaData) -> list[TableSpec]:
    """Every table, parents before the tables that point at them."""
    return [TableSpec.of(table) for table in metadata.sorted_tables]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _uuid_hex(value: Any) -> str:
    if isinstance(value, uuid.UUID):  # asyncpg's UUID is one too
        return value.hex
    text = str(value)
    return text.lower() if len(text) == 32 else uuid.UUID(text).hex


def _moment(value: Any) -> datetime:
    return _utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _iso(value: Any) -> str:
    if isinstance(value, datetime) and value.tzinfo is UTC:
        return value.isoformat(timespec="microseconds")
    return _moment(value).isoformat(timespec="microseconds")


_CANONICAL_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json_canonical(value: Any) -> str:
    return _CANONICAL_JSON.encode(json.loads(value) if isinstance(value, str | bytes) else value)


# From SQLite as SQLAlchemy stores values to what asyncpg takes. UUIDs stay text (asyncpg
# parses them in C; PostgreSQL refuses a malformed one), JSON stays text (asyncpg sends json
# columns as text).
_FROM_SQLITE: dict[Kind, Callable[[Any], Any]] = {
    Kind.UUID: _uuid_hex,
    Kind.DATETIME: _moment,
    Kind.BOOL: bool,
    Kind.JSON: _json_text,
    Kind.INT: int,
    Kind.FLOAT: float,
    Kind.STR: str,
}
_NORMALISE: dict[Kind, Callable[[Any], Any]] = {
    Kind.UUID: _uuid_hex,
    Kind.DATETIME: _iso,
    Kind.BOOL: bool,
    Kind.JSON: _json_canonical,
    Kind.INT: int,
    Kind.FLOAT: float,
    Kind.STR: str,
}


def from_sqlite(kind: Kind, raw: Any) -> Any:
    """A value as SQLite stores it (through SQLAlchemy's types) -> one PostgreSQL takes."""
    return None if raw is None else _FROM_SQLITE[kind](raw)


def convert(spec: TableSpec, raw: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        None if value is None else change(value)
        for change, value in zip(spec.from_sqlite, raw, strict=True)
    )


def normalise(kind: Kind, value: Any) -> Any:
    """One value in its canonical form (see the module's docstring)."""
    return None if value is None else _NORMALISE[kind](value)


def line(spec: TableSpec, row: Sequence[Any]) -> bytes:
    """A row's canonical line: equal bytes for equal rows, whichever database they came from."""
    values = [
        None if value is None else canonical(value)
        for canonical, value in zip(spec.normalisers, row, strict=True)
    ]
    return _LINE.encode(values).encode()


def key(kind: Kind, value: Any) -> Any:
    """A primary key's sort key: byte order on both databases (UUIDs as hex, text by code
    point, which is the byte order of UTF-8)."""
    return normalise(kind, value)


@dataclass
class Checksum:
    """Row count and SHA-256 of a table's canonical lines, fed in primary-key order."""

    rows: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)

    def add(self, spec: TableSpec, row: Sequence[Any]) -> None:
        self.rows += 1
        self._hash.update(line(spec, row))
        self._hash.update(b"\n")

    def add_all(self, spec: TableSpec, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.add(spec, row)

    @property
    def hexdigest(self) -> str:
        return str(self._hash.hexdigest())
