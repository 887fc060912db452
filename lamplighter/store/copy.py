"""``lamplighter db copy``: move a serving store from SQLite to PostgreSQL, and prove it arrived.

1. **Prepare.** The source must be at this version's latest migration; the target is migrated to
   the same revision and must hold no rows (``resume`` reconciles a target left by an interrupted
   copy instead). Triggers on the source start logging every changed row (``capture.py``).
2. **Copy.** Table by table, parents first, from one snapshot of the source: keyset batches by
   primary key (constant memory), written with PostgreSQL's binary ``COPY`` while the target's
   foreign keys are set aside (``target.py``). Ids are kept as they are. The server goes on
   writing meanwhile.
3. **Catch up.** Passes re-copy the rows logged since the last one, from a fresh snapshot each:
   deleted rows are deleted, the others upserted (``ON CONFLICT DO UPDATE``, only where they
   differ), until a pass finds few changes.
4. **Verify, live.** In one snapshot: catch up, then row counts and SHA-256 checksums of every
   table on both sides (``rows.py`` says how values are normalised).
5. **Switch over.** ``READ_ONLY`` in the data directory makes the server refuse writes with 503
   (``lamplighter/readonly.py``); once it reports its running writes done, a last catch-up, and
   every row changed since the checksums is compared one by one; counts are compared again,
   sequences are moved past the copied ids. The seconds this takes are the read-only time. Once
   verified, the flag says where the store moved: the server stays read-only, with ``/readyz``
   at 503, until it is restarted on the new URL; deleting ``READ_ONLY`` rolls back.

The source keeps being the truth until the switch: any failure lifts read-only mode and leaves
the target to be discarded or resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from alembic.script import ScriptDirectory

from lamplighter import readonly
from lamplighter.exceptions import LamplighterError
from lamplighter.settings import async_database_url
from lamplighter.store import migrate
from lamplighter.store.capture import CHANGES, SqliteSource
from lamplighter.store.database import masked
from lamplighter.store.models import Base
from lamplighter.store.rows import (
    Checksum,
    TableSpec,
    convert,
    from_sqlite,
    key,
    line,
    specs,
)
from lamplighter.store.target import PostgresTarget

Progress = Callable[[str], None]


class CopyRefused(LamplighterError):
    """The copy cannot start (bad URLs, schema mismatch, a target with rows): nothing changed."""


class CopyFailed(LamplighterError):
    """The copy started and could not finish; the source is serving and writable again."""


@dataclass(frozen=True)
class CopyOptions:
    batch: int = 1000
    resume: bool = False
    # No server uses the source: do not wait for one to acknowledge read-only mode.
    offline: bool = False
    # Longest wait, once read-only, for running requests (streams included) to finish.
    drain_timeout: float = 60.0
    # Catch up live until a pass finds at most this many changed rows (or after max_passes).
    settle_rows: int = 100
    max_passes: int = 10
    # Recompute every checksum inside the read-only window (which then lasts a full read of
    # both databases) instead of comparing only the rows changed since the live checksums.
    full_verify: bool = False


@dataclass
class TableResult:
    table: str
    source_rows: int
    target_rows: int
    source_sha256: str
    target_sha256: str
    # Rows changed after the checksums were taken, compared one by one in the read-only window,
    # and how many of them differ.
    rechecked: int = 0
    mismatched: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.source_rows == self.target_rows
            and self.source_sha256 == self.target_sha256
            and self.mismatched == 0
        )


@dataclass
class CopyReport:
    source: str
    target: str
    revision: str
    tables: list[TableResult] = field(default_factory=list)
    copied_rows: int = 0
    copy_seconds: float = 0.0
    passes: list[int] = field(default_factory=list)
    read_only_seconds: float = 0.0
    # Whether the checksums were taken inside the read-only window (--full-verify), or live
    # with the rows changed since compared one by one in the window.
    full_verify: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.tables) and all(table.ok for table in self.tables)

    @property
    def rows_per_second(self) -> float:
        return self.copied_rows / self.copy_seconds if self.copy_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for table, result in zip(data["tables"], self.tables, strict=True):
            table["ok"] = result.ok
        return {**data, "ok": self.ok, "rows_per_second": round(self.rows_per_second)}


def _split_forward_refs(
    spec: TableSpec, rows: list[tuple[Any, ...]], upto: Any
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows that may be written now, and rows pointing at a row of their own table with a key
    beyond this batch (a message whose parent sorts after it), held back to the table's end."""
    if not spec.self_refs:
        return rows, []
    now: list[tuple[Any, ...]] = []
    later: list[tuple[Any, ...]] = []
    for row in rows:
        ahead = any(row[i] is not None and key(spec.pk_kind, row[i]) > upto for i in spec.self_refs)
        (later if ahead else now).append(row)
    return now, later


async def _uninterrupted(*steps: Callable[[], object]) -> None:
    """Run blocking cleanup ``steps`` in a thread, in order, to their end even if the task is
    cancelled meanwhile (SIGTERM or Ctrl-C arriving as a copy finishes), then let the
    cancellation go on: cut short, they would leave the change-log triggers on the live source."""

    def cleanup() -> None:
        for step in steps:
            step()

    done = asyncio.ensure_future(asyncio.to_thread(cleanup))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await done
        raise


class Copier:
    def __init__(
        self,
        source_url: str,
        target_url: str,
        data_dir: Path,
        options: CopyOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.source_url = async_database_url(source_url)
        self.given_target = target_url
        self.target_url = async_database_url(target_url)
        self.data_dir = data_dir
        self.options = options or CopyOptions()
        self.say: Progress = progress or (lambda _: None)
        self.specs = specs(Base.metadata)
        self.target = PostgresTarget(self.target_url)
        self.source: SqliteSource | None = None

    # --- the phases -------------------------------------------------------------------------

    async def compare(self) -> list[TableResult]:
        """Row counts and checksums of every table on both sides, from one snapshot of the
        source; nothing is written. (After a copy, or to check a target by hand.)"""
        source = self._open_source()
        try:
            await self._open_target()
            await asyncio.to_thread(source.begin)
            results = []
            for spec in self.specs:
                src, tgt = await self._checksums(source, spec)
                results.append(
                    TableResult(spec.name, src.rows, tgt.rows, src.hexdigest, tgt.hexdigest)
                )
            return results
        finally:
            await asyncio.to_thread(source.end)
            source.close()
            await self.target.close()

    async def run(self) -> CopyReport:
        source = self._open_source()
        try:
            await self._open_target()
            report = await self._prepare(source)
            await asyncio.to_thread(source.install_capture)
            try:
                return await self._copy(source, report)
            finally:
                await _uninterrupted(source.end, source.remove_capture)
        finally:
            source.close()
            await self.target.close()

    async def _open_target(self) -> None:
        """Connect to the target, or refuse in one line: a database not created yet, a role
        or password it does not take, a server that is not there."""
        try:
            await self.target.open()
        except (asyncpg.PostgresError, OSError) as exc:
            raise CopyRefused(f"cannot open {masked(self.given_target)}: {exc}") from exc

    def _open_source(self) -> SqliteSource:
        if not self.target_url.startswith("postgresql+asyncpg://"):
            raise CopyRefused(f"--to must be a postgresql:// URL, not {masked(self.target_url)}")
        prefix = "sqlite+aiosqlite:///"
        if not self.source_url.startswith(prefix):
            raise CopyRefused(
                "db copy moves a SQLite store; this deployment's database is "
                f"{masked(self.source_url)} (between PostgreSQL servers, use pg_dump or "
                "logical replication)"
            )
        try:
            self.source = SqliteSource(Path(self.source_url[len(prefix) :]), self.specs)
        except FileNotFoundError as exc:
            raise CopyRefused(str(exc)) from exc
        return self.source

    async def _prepare(self, source: SqliteSource) -> CopyReport:
        head = ScriptDirectory.from_config(
            migrate.alembic_config(self.target_url)
        ).get_current_head()
        revision = await asyncio.to_thread(source.revision)
        if revision != head:
            raise CopyRefused(
                f"the source is at migration {revision or '(none)'} but this Lamplighter's "
                f"latest is {head}: start the server on it once (it migrates), then copy"
            )
        filled = {s.name: n for s in self.specs if (n := await self.target.count(s, missing=0))}
        if filled and not self.options.resume:
            listed = ", ".join(f"{name} ({n})" for name, n in filled.items())
            raise CopyRefused(
                f"the target already has rows: {listed}. Use an empty database, or pass --resume "
                "to reconcile the target of an interrupted copy"
            )
        self.say(f"migrating the target to revision {revision}")
        try:
            await asyncio.to_thread(migrate.upgrade, self.target_url, str(revision))
        except Exception as exc:
            raise CopyRefused(f"cannot migrate the target: {exc}") from exc
        extra = (await asyncio.to_thread(source.tables)) - {s.name for s in self.specs}
        extra -= {"alembic_version", CHANGES}
        if extra:
            raise CopyRefused(
                f"the source has tables the models do not: {', '.join(sorted(extra))}"
            )
        for spec in self.specs:
            for side, found in (
                ("source", await asyncio.to_thread(source.columns, spec.name)),
                ("target", await self.target.columns(spec.name)),
            ):
                if sorted(found) != sorted(spec.columns):
                    raise CopyRefused(
                        f"{spec.name} on the {side} has columns {sorted(found)}, "
                        f"the models {sorted(spec.columns)}"
                    )
        return CopyReport(
            source=masked(self.source_url), target=masked(self.given_target), revision=str(revision)
        )

    async def _copy(self, source: SqliteSource, report: CopyReport) -> CopyReport:
        started = time.perf_counter()
        seen = await asyncio.to_thread(source.begin)
        if self.options.resume:
            report.copied_rows = await self._reconcile(source)
        else:
            await self.target.drop_foreign_keys()
            for spec in self.specs:
                report.copied_rows += await self._bulk(source, spec)
        try:
            restored = await self.target.restore_foreign_keys()
        except asyncpg.PostgresError as exc:
            raise CopyFailed(f"the copied rows break a foreign key: {exc}") from exc
        if restored:
            self.say(f"restored {restored} foreign keys")
        await asyncio.to_thread(source.end)
        report.copy_seconds = time.perf_counter() - started
        self.say(
            f"copied {report.copied_rows} rows in {report.copy_seconds:.1f} s "
            f"({report.rows_per_second:,.0f} rows/s)"
        )
        for _ in range(self.options.max_passes):
            upto = await asyncio.to_thread(source.begin)
            changed = await self._catch_up(source, seen, upto)
            await asyncio.to_thread(source.end)
            report.passes.append(changed)
            seen = upto
            self.say(f"catch-up pass: {changed} changed rows")
            if changed <= self.options.settle_rows:
                break
        checked, changed, checksums = await self._verify_live(source, seen)
        report.passes.append(changed)
        await self._switch_over(source, report, checked, checksums)
        return report

    async def _bulk(self, source: SqliteSource, spec: TableSpec) -> int:
        """Copy a table into an empty one, batch by batch, reading the next batch while the
        last is written. (Foreign keys are set aside meanwhile, so order within the table, a
        message before its parent, does not matter.)"""
        batch, pk = self.options.batch, spec.pk_index

        def read(after: Any) -> tuple[Any, list[tuple[Any, ...]]]:
            raw = source.batch_after(spec, after, batch)
            return (raw[-1][pk] if raw else after), [convert(spec, row) for row in raw]

        copied = 0
        after, rows = await asyncio.to_thread(read, None)
        while rows:
            ahead = asyncio.ensure_future(asyncio.to_thread(read, after))
            try:
                await self._write(self.target.insert, spec, rows)
            except BaseException:
                await asyncio.gather(ahead, return_exceptions=True)
                raise
            copied += len(rows)
            after, rows = await ahead
        self.say(f"  {spec.name}: {copied} rows")
        return copied

    async def _write(
        self, action: Callable[[TableSpec, list[Any]], Any], spec: TableSpec, rows: list[Any]
    ) -> None:
        try:
            await action(spec, rows)
        except asyncpg.PostgresError as exc:
            first = rows[0][spec.pk_index] if isinstance(rows[0], tuple) else rows[0]
            raise CopyFailed(f"writing {spec.name} (a batch from id {first}): {exc}") from exc

    async def _catch_up(self, source: SqliteSource, after: int, upto: int) -> int:
        """Bring the target to the open snapshot for the rows logged in ``(after, upto]``:
        deletions first (children before parents), then upserts (parents first)."""
        if upto <= after:
            return 0
        batch, changed = self.options.batch, 0
        for spec in reversed(self.specs):
            for keys in await asyncio.to_thread(source.changed, spec, after, upto, batch):
                there = await asyncio.to_thread(source.present, spec, keys)
                gone = [from_sqlite(spec.pk_kind, k) for k in keys if k not in there]
                await self._write(self.target.delete, spec, gone)
        for spec in self.specs:
            held: list[tuple[Any, ...]] = []
            for keys in await asyncio.to_thread(source.changed, spec, after, upto, batch):
                raw = await asyncio.to_thread(source.rows, spec, keys)
                rows = [convert(spec, row) for row in raw]
                upto_key = key(spec.pk_kind, from_sqlite(spec.pk_kind, keys[-1]))
                now, later = _split_forward_refs(spec, rows, upto_key)
                await self._write(self.target.upsert, spec, now)
                held += later
                changed += len(keys)
            await self._write(self.target.upsert, spec, held)
        return changed

    async def _reconcile(self, source: SqliteSource) -> int:
        """``--resume``: make a target that holds part of the store equal to the open snapshot,
        by merging both sides in key order: extra rows deleted (children first), missing ones
        copied and differing ones rewritten (parents first)."""
        batch, written = self.options.batch, 0
        for spec in reversed(self.specs):
            extra: list[Any] = []
            async for _, in_source, in_target in self._merge(source, spec, keys_only=True):
                if in_target is not None and in_source is None:
                    extra.append(in_target[0])
                if len(extra) >= batch:
                    await self._write(self.target.delete, spec, extra)
                    extra = []
            await self._write(self.target.delete, spec, extra)
        for spec in self.specs:
            pending: list[tuple[Any, ...]] = []  # missing or differing: upserted alike
            held: list[tuple[Any, ...]] = []
            async for k, in_source, in_target in self._merge(source, spec):
                if in_source is None:
                    continue
                if in_target is None or line(spec, in_source) != line(spec, in_target):
                    pending.append(in_source)
                if len(pending) >= batch:
                    now, later = _split_forward_refs(spec, pending, k)
                    await self._write(self.target.upsert, spec, now)
                    held += later
                    written += len(now)
                    pending = []
            await self._write(self.target.upsert, spec, [*pending, *held])
            written += len(pending) + len(held)
            self.say(f"  {spec.name}: reconciled")
        return written

    async def _merge(
        self, source: SqliteSource, spec: TableSpec, *, keys_only: bool = False
    ) -> AsyncIterator[tuple[Any, tuple[Any, ...] | None, tuple[Any, ...] | None]]:
        """Both sides in key order, side by side: (key, source row or None, target row or
        None). With ``keys_only`` the rows are 1-tuples of the key."""
        batch, pk = self.options.batch, spec.pk_index

        async def from_source() -> AsyncIterator[tuple[Any, ...]]:
            after = None
            while raw := await asyncio.to_thread(source.batch_after, spec, after, batch):
                after = raw[-1][pk]
                for row in raw:
                    converted = convert(spec, row)
                    yield (converted[pk],) if keys_only else converted

        left, right = from_source(), self.target.stream(spec, batch, keys_only=keys_only)
        index = 0 if keys_only else pk
        a = await anext(left, None)
        b = await anext(right, None)
        while a is not None or b is not None:
            ka = None if a is None else key(spec.pk_kind, a[index])
            kb = None if b is None else key(spec.pk_kind, b[index])
            if kb is None or (ka is not None and ka < kb):
                yield ka, a, None
                a = await anext(left, None)
            elif ka is None or kb < ka:
                yield kb, None, tuple(b) if b is not None else None
                b = await anext(right, None)
            else:
                yield ka, a, tuple(b) if b is not None else None
                a, b = await anext(left, None), await anext(right, None)

    # --- verification -----------------------------------------------------------------------

    async def _checksums(self, source: SqliteSource, spec: TableSpec) -> tuple[Checksum, Checksum]:
        batch, pk = self.options.batch, spec.pk_index

        def of_source() -> Checksum:
            checksum, after = Checksum(), None
            while raw := source.batch_after(spec, after, batch):
                after = raw[-1][pk]
                checksum.add_all(spec, (convert(spec, row) for row in raw))
            return checksum

        async def of_target() -> Checksum:
            checksum = Checksum()
            async for record in self.target.stream(spec, batch):
                checksum.add(spec, record)
            return checksum

        src, tgt = await asyncio.gather(asyncio.to_thread(of_source), of_target())
        return src, tgt

    async def _verify_live(
        self, source: SqliteSource, seen: int
    ) -> tuple[int, int, dict[str, tuple[Checksum, Checksum]]]:
        """Catch up and checksum every table in one snapshot, while the server serves:
        (the snapshot's last change, rows caught up, checksums)."""
        upto = await asyncio.to_thread(source.begin)
        changed = await self._catch_up(source, seen, upto)
        self.say("checksumming both databases")
        found = {spec.name: await self._checksums(source, spec) for spec in self.specs}
        await asyncio.to_thread(source.end)
        bad = [
            name for name, (s, t) in found.items() if (s.rows, s.hexdigest) != (t.rows, t.hexdigest)
        ]
        if bad:
            raise CopyFailed(f"checksums differ before the switch-over: {', '.join(bad)}")
        return upto, changed, found

    async def _recheck(
        self, source: SqliteSource, spec: TableSpec, after: int, upto: int
    ) -> tuple[int, int]:
        """Compare the rows of ``spec`` logged in ``(after, upto]`` one by one: how many, and
        how many differ."""
        rows = differing = 0
        batch = self.options.batch
        for keys in await asyncio.to_thread(source.changed, spec, after, upto, batch):
            mine = {
                key(spec.pk_kind, row[spec.pk_index]): line(spec, convert(spec, row))
                for row in await asyncio.to_thread(source.rows, spec, keys)
            }
            wanted = [from_sqlite(spec.pk_kind, k) for k in keys]
            theirs = {
                key(spec.pk_kind, record[spec.pk_index]): line(spec, record)
                for record in await self.target.rows(spec, wanted)
            }
            rows += len(keys)
            differing += sum(
                mine.get(k) != theirs.get(k) for k in (key(spec.pk_kind, w) for w in wanted)
            )
        return rows, differing

    async def _switch_over(
        self,
        source: SqliteSource,
        report: CopyReport,
        checked: int,
        checksums: dict[str, tuple[Checksum, Checksum]],
    ) -> None:
        options = self.options
        started = time.perf_counter()
        flag = readonly.freeze(self.data_dir, self.source_url, "lamplighter db copy")
        self.say("read-only: waiting for running requests to finish")
        try:
            await self._drain(source, flag, started + options.drain_timeout)
            seen = checked
            for _ in range(5):
                upto = await asyncio.to_thread(source.begin)
                report.passes.append(await self._catch_up(source, seen, upto))
                seen = upto
                report.tables = await self._final_results(source, checked, upto, checksums)
                await asyncio.to_thread(source.end)
                if await asyncio.to_thread(source.last_change) == upto:
                    break
            else:
                raise CopyFailed(
                    "the source kept changing while read-only: is another server or a "
                    "lamplighter command writing to it?"
                )
            await self.target.bump_sequences(self.specs)
        except BaseException:
            readonly.thaw(self.data_dir, flag)
            raise
        report.read_only_seconds = time.perf_counter() - started
        report.full_verify = options.full_verify
        if not report.ok:
            readonly.thaw(self.data_dir, flag)
        else:  # for good: the old server is told to drain (/readyz) and be restarted
            readonly.settle(self.data_dir, flag, masked(self.given_target))

    async def _drain(self, source: SqliteSource, flag: readonly.Flag, deadline: float) -> None:
        while not self.options.offline and not readonly.drained(self.data_dir, flag):
            if time.perf_counter() > deadline:
                raise CopyFailed(
                    f"no server acknowledged read-only mode within {self.options.drain_timeout:g}"
                    f" s. Run db copy with the server's own settings (its data directory is "
                    f"where READ_ONLY goes: {self.data_dir}); if no server is running, pass "
                    "--offline"
                )
            await asyncio.sleep(0.01)
        # A stream whose client left is settled a moment after its request ended.
        while not self.options.offline and (await asyncio.to_thread(source.in_progress)) > 0:
            if time.perf_counter() > deadline:
                raise CopyFailed("answers were still being written when --drain-timeout ran out")
            await asyncio.sleep(0.01)

    async def _final_results(
        self,
        source: SqliteSource,
        checked: int,
        upto: int,
        checksums: dict[str, tuple[Checksum, Checksum]],
    ) -> list[TableResult]:
        results = []
        for spec in self.specs:
            if self.options.full_verify:
                src, tgt = await self._checksums(source, spec)
                rechecked = differing = 0
            else:
                src, tgt = checksums[spec.name]
                rechecked, differing = await self._recheck(source, spec, checked, upto)
            results.append(
                TableResult(
                    table=spec.name,
                    source_rows=await asyncio.to_thread(source.count, spec),
                    target_rows=await self.target.count(spec),
                    source_sha256=src.hexdigest,
                    target_sha256=tgt.hexdigest,
                    rechecked=rechecked,
                    mismatched=differing,
                )
            )
        return results


async def copy_store(
    source_url: str,
    target_url: str,
    data_dir: Path,
    options: CopyOptions | None = None,
    progress: Progress | None = None,
) -> CopyReport:
    """Move the store at ``source_url`` (SQLite, possibly serving) to ``target_url``."""
    return await Copier(source_url, target_url, data_dir, options, progress).run()
