"""Migration lint: operations that would lock or break a live PostgreSQL database.

Migrations run while replicas serve (``serve`` migrates at start, one replica after another), so
each must be safe beside running code and must not hold a lock that stalls traffic. The lint
reads each migration's ``upgrade()`` (with ``ast``; nothing is imported or run) and flags:

``index-not-concurrent``
    ``create_index`` on a table that existed before the migration, without
    ``postgresql_concurrently=True``: a plain build blocks writes for as long as it takes.
    Indexes of a table created earlier in the same migration are fine.
``concurrent-in-transaction``
    ``postgresql_concurrently=True`` outside ``with op.get_context().autocommit_block():``:
    PostgreSQL refuses to build an index concurrently inside a transaction.
``not-null-without-default``
    ``add_column`` of a NOT NULL column with no ``server_default``: fails on a table with rows,
    and old code inserting without it fails too.
``volatile-default``
    ``add_column`` whose ``server_default`` calls a volatile function (``random()``,
    ``gen_random_uuid()``, ``clock_timestamp()``, ``nextval``): rewrites the whole table.
``type-change``
    ``alter_column(type_=...)``: rewrites the table under an exclusive lock, and the code running
    beside the migration expects the old type.
``set-not-null``
    ``alter_column(nullable=False)``: scans the whole table under an exclusive lock.
``rename``
    ``rename_table`` or ``alter_column(new_column_name=...)``: the running code still uses the
    old name. Expand and contract instead: add the new, copy, switch the code, drop the old.
``drop-in-use``
    ``drop_column`` or ``drop_table`` of something the models still have: the running code
    would fail at once.
``drop``
    Any other ``drop_column`` or ``drop_table``: the contract step, allowed only when marked
    (below), once no released version uses it.
``constraint-on-existing``
    ``create_foreign_key``, ``create_check_constraint`` or ``create_unique_constraint`` on an
    existing table: validating every row holds a lock that blocks writes. Add foreign keys and
    checks with ``postgresql_not_valid=True`` and validate them in a later migration; build a
    unique index concurrently first.
``raw-index``
    ``op.execute("CREATE INDEX ...")`` without ``CONCURRENTLY`` on an existing table.
``lock-timeout-disabled``
    ``op.execute`` that turns ``lock_timeout`` off (``= 0`` or ``RESET``).

and, for the migration environment, ``no-lock-timeout``: ``env.py`` must set ``lock_timeout`` so
that a statement waiting for a lock gives up instead of queueing every query behind it.

A finding is waived by a comment on the operation's first line or the line above it::

    batch.drop_column("legacy")  # migration-lint: allow drop (unused since 0.4)

naming the rule(s) and, after them, why.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import MetaData

VOLATILE = re.compile(r"\b(random|gen_random_uuid|uuid_generate_v\w+|clock_timestamp|nextval)\s*\(")
_ALLOW = re.compile(r"#\s*migration-lint:\s*allow\s+(.*)")
_RAW_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+"
    r"(?:ONLY\s+)?\"?(\w+)\"?",
    re.IGNORECASE,
)
_NO_LOCK_TIMEOUT = re.compile(
    r"lock_timeout\s*(=|TO)\s*'?0'?\s*(;|$|')|RESET\s+lock_timeout", re.IGNORECASE
)


@dataclass(frozen=True)
class Finding:
    path: str
    revision: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def _const(node: ast.AST | None) -> object:
    """A literal's value; an f-string's constant parts; anything else: None."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(part.value) for part in node.values if isinstance(part, ast.Constant))
    return None


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _arg(call: ast.Call, index: int, name: str) -> object:
    node = call.args[index] if len(call.args) > index else _kw(call, name)
    return _const(node)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


class _Migration(ast.NodeVisitor):
    """Walks ``upgrade()`` in order, knowing which table each ``batch_op`` alters, which
    tables this migration created, and whether an autocommit block is open."""

    def __init__(self, path: str, source: str, revision: str, metadata: MetaData | None) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.revision = revision
        self.metadata = metadata
        self.created: set[str] = set()
        self.batches: dict[str, str] = {}
        self.autocommit = 0
        self.findings: list[Finding] = []

    def flag(self, node: ast.AST, rule: str, message: str) -> None:
        line = getattr(node, "lineno", 0)
        nearby = self.lines[max(0, line - 2) : getattr(node, "end_lineno", line) or line]
        for text in nearby:
            found = _ALLOW.search(text)
            if found and rule in re.findall(r"[\w-]+", found.group(1)):
                return
        self.findings.append(Finding(self.path, self.revision, line, rule, message))

    def visit_With(self, node: ast.With) -> None:
        opened: list[str] = []
        autocommit = False
        for item in node.items:
            call = item.context_expr
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            if call.func.attr == "batch_alter_table" and isinstance(item.optional_vars, ast.Name):
                table = _arg(call, 0, "table_name")
                if isinstance(table, str):
                    self.batches[item.optional_vars.id] = table
                    opened.append(item.optional_vars.id)
            elif call.func.attr == "autocommit_block":
                autocommit = True
        self.autocommit += autocommit
        for statement in node.body:
            self.visit(statement)
        self.autocommit -= autocommit
        for name in opened:
            self.batches.pop(name, None)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            return
        owner, op = func.value.id, func.attr
        batch = self.batches.get(owner)
        if batch is None and owner != "op":
            return
        # In a batch, the table is the batch's and every positional argument moves left by one.
        shift = 0 if batch is not None else 1

        def table_at(index: int, name: str = "table_name") -> str | None:
            if batch is not None:
                return batch
            value = _arg(node, index, name)
            return value if isinstance(value, str) else None

        if op == "create_table":
            table = _arg(node, 0, "table_name")
            if isinstance(table, str):
                self.created.add(table)
        elif op == "create_index":
            self._create_index(node, table_at(1))
        elif op == "add_column":
            self._add_column(
                node, table_at(0), node.args[shift] if len(node.args) > shift else None
            )
        elif op == "alter_column":
            column = _arg(node, shift, "column_name")
            where = f"{table_at(0)}.{column}"
            if _kw(node, "type_") is not None:
                self.flag(node, "type-change", f"changes the type of {where}")
            if _is_false(_kw(node, "nullable")):
                self.flag(node, "set-not-null", f"makes {where} NOT NULL")
            if _kw(node, "new_column_name") is not None:
                self.flag(node, "rename", f"renames {where}")
        elif op == "rename_table":
            self.flag(node, "rename", f"renames the table {_arg(node, 0, 'old_table_name')}")
        elif op in ("drop_column", "drop_table"):
            table = table_at(0) if op == "drop_column" else _arg(node, 0, "table_name")
            column = _arg(node, shift, "column_name") if op == "drop_column" else None
            self._drop(node, table if isinstance(table, str) else None, column)
        elif op in ("create_foreign_key", "create_check_constraint", "create_unique_constraint"):
            table = table_at(1, "source_table" if op == "create_foreign_key" else "table_name")
            not_valid = _is_true(_kw(node, "postgresql_not_valid"))
            if table not in self.created and not (not_valid and op != "create_unique_constraint"):
                self.flag(node, "constraint-on-existing", f"{op} on the existing table {table}")
        elif op == "execute" and owner == "op":
            self._execute(node)

    def _create_index(self, node: ast.Call, table: str | None) -> None:
        concurrently = _is_true(_kw(node, "postgresql_concurrently"))
        if concurrently and not self.autocommit:
            self.flag(
                node,
                "concurrent-in-transaction",
                "builds an index concurrently inside the migration's transaction; wrap it in "
                "`with op.get_context().autocommit_block():`",
            )
        if table not in self.created and not concurrently:
            self.flag(
                node,
                "index-not-concurrent",
                f"indexes the existing table {table} without postgresql_concurrently=True",
            )

    def _add_column(self, node: ast.Call, table: str | None, column: ast.expr | None) -> None:
        if table in self.created or not isinstance(column, ast.Call):
            return
        name = _arg(column, 0, "name")
        not_null = _is_false(_kw(column, "nullable")) or _is_true(_kw(column, "primary_key"))
        default = _kw(column, "server_default")
        if not_null and default is None:
            self.flag(
                node,
                "not-null-without-default",
                f"adds the NOT NULL column {table}.{name} without a server_default",
            )
        if default is not None:
            text = " ".join(str(_const(n)) for n in ast.walk(default) if isinstance(_const(n), str))
            if VOLATILE.search(text):
                self.flag(
                    node,
                    "volatile-default",
                    f"{table}.{name}'s default is volatile: the whole table is rewritten",
                )

    def _drop(self, node: ast.Call, table: str | None, column: object) -> None:
        what = f"{table}.{column}" if column is not None else f"the table {table}"
        known = self.metadata.tables.get(table or "") if self.metadata is not None else None
        in_use = known is not None and (column is None or str(column) in known.columns)
        if in_use:
            self.flag(node, "drop-in-use", f"drops {what}, which the models still use")
        else:
            self.flag(node, "drop", f"drops {what}: mark the contract step if it is meant")

    def _execute(self, node: ast.Call) -> None:
        sql = _arg(node, 0, "sqltext")
        if not isinstance(sql, str):
            return
        for match in _RAW_INDEX.finditer(sql):
            if not match.group(1) and match.group(2) not in self.created:
                self.flag(
                    node, "raw-index", f"CREATE INDEX on {match.group(2)} without CONCURRENTLY"
                )
        if _NO_LOCK_TIMEOUT.search(sql):
            self.flag(node, "lock-timeout-disabled", "turns lock_timeout off")


def _revision(tree: ast.Module) -> str:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "revision" for target in node.targets
        ):
            return str(_const(node.value))
    return "?"


def lint_source(
    source: str, path: str = "<migration>", metadata: MetaData | None = None
) -> list[Finding]:
    """Findings for one migration's source. ``metadata``: the models, to tell a drop of
    something still in use from a contract step."""
    tree = ast.parse(source, filename=path)
    upgrade = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"), None
    )
    visitor = _Migration(path, source, _revision(tree), metadata)
    if upgrade is not None:
        for statement in upgrade.body:
            visitor.visit(statement)
    return visitor.findings


def lint_environment(source: str, path: str = "env.py") -> list[Finding]:
    """``env.py`` must give migrations a ``lock_timeout``."""
    if re.search(r"SET\s+lock_timeout\b", source, re.IGNORECASE):
        return []
    return [Finding(path, "env", 1, "no-lock-timeout", "migrations run without a lock_timeout")]


def lint_migrations(directory: Path, metadata: MetaData | None = None) -> Iterator[Finding]:
    """Every finding in ``directory/versions/*.py`` and ``directory/env.py``."""
    env = directory / "env.py"
    if env.exists():
        yield from lint_environment(env.read_text(), str(env))
    for path in sorted((directory / "versions").glob("*.py")):
        yield from lint_source(path.read_text(), str(path), metadata)
