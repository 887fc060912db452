"""``lamplighter db copy``: a serving SQLite store moves to PostgreSQL with every acknowledged
write, its ids and conversation trees intact, for a read-only window of a fraction of a second;
and the checks around it (normalised checksums, refusals, resuming, rolling back)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from sqlalchemy import insert, select

from lamplighter import readonly
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from lamplighter.store import migrate
from lamplighter.store.copy import (
    Copier,
    CopyFailed,
    CopyOptions,
    CopyRefused,
    copy_store,
)
from lamplighter.store.database import Database
from lamplighter.store.models import (
    AbuseReport,
    ApiKey,
    AuditEntry,
    Base,
    Comparison,
    Conversation,
    Credit,
    Deletion,
    Invite,
    Message,
    Rating,
    Usage,
    User,
    WebSession,
    new_id,
    utcnow,
)
from lamplighter.store.rows import Checksum, Kind, TableSpec, convert, line, normalise, specs
from lamplighter.store.target import SET_ASIDE
from tests.conftest import (
    POSTGRES_URL,
    ROOMY_PLAN,
    SCRIPTED,
    LiveServer,
    _postgres_available,
    make_settings,
)

PASSWORD = "correct horse battery staple"


# --- normalisation and checksums (no database) -------------------------------------------------


def test_a_value_normalises_the_same_from_either_database() -> None:
    ident = uuid.UUID("01a214c3-ef71-7a0f-a41d-1c8e8b66c5be")
    for form in (ident, ident.hex, str(ident), ident.hex.upper()):
        assert normalise(Kind.UUID, form) == "01a214c3ef717a0fa41d1c8e8b66c5be"
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    for form in (
        moment,
        moment.astimezone(timezone(timedelta(hours=2))),  # the same instant elsewhere
        moment.replace(tzinfo=None),  # SQLite keeps UTC without a zone
        "2026-01-02 03:04:05.000006",  # as SQLite stores it
    ):
        assert normalise(Kind.DATETIME, form) == "2026-01-02T03:04:05.000006+00:00"
    assert normalise(Kind.DATETIME, "2026-01-02 03:04:05") == "2026-01-02T03:04:05.000000+00:00"
    for form in ('{"b": [1, 2], "a": "é"}', '{"a":"é","b":[1,2]}', {"b": [1, 2], "a": "é"}):
        assert normalise(Kind.JSON, form) == '{"a":"é","b":[1,2]}'
    assert normalise(Kind.BOOL, 1) is True and normalise(Kind.BOOL, 0) is False
    assert normalise(Kind.INT, None) is None


def test_a_row_has_one_line_whichever_database_it_came_from() -> None:
    spec = TableSpec.of(Base.metadata.tables["messages"])
    ident, parent = new_id(), new_id()
    stored_by_sqlite = {
        "id": ident.hex, "conversation_id": ident.hex, "user_id": ident.hex,
        "parent_id": parent.hex, "role": "assistant", "content": 'a "quoted"\nline ü',
        "path_hash": "h" * 64, "depth": 3, "status": "complete", "finish_reason": "stop",
        "model": None, "created_at": "2026-01-02 03:04:05.000006",
        "updated_at": "2026-01-02 03:04:06.000000", "moderation": '{"output": [], "input": ["x"]}',
        "author": None, "response_format": '{"type": "json_object"}',
        "request_metadata": '{"b": "2", "a": "1"}', "tool_calls": None, "tool_call_id": None,
        "tools": None, "instructions": "Be brief.", "previous_response_id": parent.hex,
        "background": 1,
    }  # fmt: skip
    from_postgres = {
        **stored_by_sqlite,
        "id": ident, "conversation_id": ident, "user_id": ident, "parent_id": parent,
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "updated_at": datetime(2026, 1, 2, 4, 4, 6, tzinfo=timezone(timedelta(hours=1))),
        "moderation": '{"input":["x"],"output":[]}', "response_format": '{"type":"json_object"}',
        "request_metadata": '{"a":"1","b":"2"}', "previous_response_id": parent,
        "background": True,
    }  # fmt: skip
    raw = tuple(stored_by_sqlite[c] for c in spec.columns)
    pg = tuple(from_postgres[c] for c in spec.columns)
    assert line(spec, raw) == line(spec, convert(spec, raw)) == line(spec, pg)
    changed = tuple("other" if c == "content" else from_postgres[c] for c in spec.columns)
    assert line(spec, changed) != line(spec, pg)


def test_a_checksum_counts_rows_and_depends_on_every_value_and_the_order() -> None:
    spec = TableSpec.of(Base.metadata.tables["deletions"])
    rows = [(i, utcnow(), "conversation", new_id()) for i in range(1, 4)]

    def of(found: list[tuple[Any, ...]]) -> tuple[int, str]:
        checksum = Checksum()
        checksum.add_all(spec, found)
        return checksum.rows, checksum.hexdigest

    assert of(rows) == of([tuple(row) for row in rows])
    assert of(rows)[0] == 3
    assert of(rows) != of(rows[::-1])
    assert of(rows) != of([*rows[:2], (3, rows[2][1], "user", rows[2][3])])
    assert of(rows) != of(rows[:2])


def test_tables_come_parents_first_and_every_column_has_a_kind() -> None:
    names = [spec.name for spec in specs(Base.metadata)]
    assert names.index("users") < names.index("conversations") < names.index("messages")
    assert names.index("messages") < min(names.index("ratings"), names.index("comparisons"))
    messages = TableSpec.of(Base.metadata.tables["messages"])
    assert [messages.columns[i] for i in messages.self_refs] == ["parent_id"]


def test_the_read_only_flag_names_one_database(tmp_path: Path) -> None:
    sqlite = f"sqlite+aiosqlite:///{tmp_path}/lamplighter.db"
    assert readonly.same_database(sqlite, f"sqlite:///{tmp_path}/./lamplighter.db")
    assert not readonly.same_database(sqlite, "postgresql://u@h/db")
    flag = readonly.freeze(tmp_path, sqlite, "test")
    assert readonly.read_flag(tmp_path) == flag
    assert not readonly.drained(tmp_path, flag)
    readonly.thaw(tmp_path, readonly.Flag("x", "other", "", ""))  # someone else's: kept
    assert readonly.read_flag(tmp_path) == flag
    readonly.thaw(tmp_path, flag)
    assert readonly.read_flag(tmp_path) is None


async def test_read_only_refuses_new_writes_and_acknowledges_once_running_ones_end(
    tmp_path: Path,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/v1/chat/completions":
            started.set()
            await release.wait()  # a long stream, say
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    database = f"sqlite+aiosqlite:///{tmp_path}/lamplighter.db"
    gate = readonly.ReadOnly(app, data_dir=tmp_path, database_url=database)
    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        running = asyncio.create_task(http.post("/v1/chat/completions"))
        await started.wait()
        assert gate.writing == 1
        flag = readonly.freeze(tmp_path, database, "test")
        gate._acknowledge()
        assert not readonly.drained(tmp_path, flag)  # a write is still running
        refused = await http.post("/api/feedback")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "read_only"
        assert (await http.get("/v1/models")).status_code == 200  # reads go on
        release.set()
        assert (await running).status_code == 200  # the running write finished
        gate._acknowledge()
        assert readonly.drained(tmp_path, flag)
        # A flag for another database does not apply; lifting the flag lifts the refusal.
        readonly.freeze(tmp_path, "postgresql+asyncpg://u@h/other", "test")
        assert (await http.post("/x")).status_code == 200
        readonly.thaw(tmp_path)
        gate._acknowledge()
        assert not (tmp_path / readonly.DRAINED).exists()
        assert (await http.post("/x")).status_code == 200


async def test_once_the_store_moved_for_good_writes_are_refused_as_such(tmp_path: Path) -> None:
    """After a verified copy the old server never takes writes again: its refusal says the
    deployment moved and this instance must be restarted, not "a few seconds"."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    database = f"sqlite+aiosqlite:///{tmp_path}/lamplighter.db"
    gate = readonly.ReadOnly(app, data_dir=tmp_path, database_url=database)
    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        flag = readonly.freeze(tmp_path, database, "lamplighter db copy")
        moving = (await http.post("/v1/chat/completions")).json()["error"]
        assert "a few seconds" in moving["message"]
        assert readonly.moved(tmp_path, database) is None  # may still be rolled back
        gate._acknowledge()
        moved = readonly.settle(tmp_path, flag, "postgresql://u:***@h/db")
        assert readonly.drained(tmp_path, moved)  # the acknowledgement still holds
        assert readonly.moved(tmp_path, database) == moved
        assert readonly.moved(tmp_path, "postgresql+asyncpg://u@h/db") is None  # the new one
        refused = await http.post("/v1/chat/completions")
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "read_only"
        assert "moved to a new database" in error["message"]
        assert "must be restarted against the new database" in error["message"]
        assert "a few seconds" not in error["message"]
        assert (await http.get("/v1/models")).status_code == 200  # reads go on
        readonly.thaw(tmp_path, flag)  # rolling back still works
        assert (await http.post("/x")).status_code == 200


# --- a store to copy ---------------------------------------------------------------------------


async def seed(db: Database, users: int = 3, conversations: int = 8, depth: int = 10) -> None:
    """Rows in every table, conversation trees with branches, JSON, unicode and NULLs."""
    now = utcnow()
    rows: dict[type[Base], list[dict[str, Any]]] = {}

    def add(table: type[Base], /, **values: Any) -> dict[str, Any]:
        rows.setdefault(table, []).append(values)
        return values

    for u in range(users):
        user = add(
            User, id=new_id(), email=f"seed-{uuid.uuid4().hex[:10]}@example.org", plan="roomy",
            is_admin=u == 0, created_at=now, training_consent=[None, True, False][u % 3],
            banned=False, password_hash=None,
        )  # fmt: skip
        add(
            ApiKey, id=new_id(), user_id=user["id"], name="ключ", prefix="ll-abc",
            key_hash=uuid.uuid4().hex * 2, created_at=now, scopes=["chat", "feedback"],
        )  # fmt: skip
        add(
            WebSession, token_hash=uuid.uuid4().hex * 2, user_id=user["id"], csrf_token="c",
            created_at=now, expires_at=now + timedelta(days=30),
        )  # fmt: skip
        for _ in range(conversations):
            conversation = add(
                Conversation, id=new_id(), user_id=user["id"], title="Über «trees»",
                created_at=now, updated_at=now, current_leaf_id=None,
            )  # fmt: skip
            parent = None
            for d in range(depth):
                message = add(
                    Message, id=new_id(), conversation_id=conversation["id"],
                    user_id=user["id"], parent_id=parent,
                    role="user" if d % 2 == 0 else "assistant",
                    content=f'turn {d}: "quotes", ü, 🙂\nnew line', path_hash=f"{d:064d}",
                    depth=d, status="complete", created_at=now + timedelta(microseconds=d),
                    updated_at=now, moderation={"output": [], "input": ["x"]} if d == 3 else None,
                    finish_reason="stop" if d % 2 else None, model="m" if d % 2 else None,
                )  # fmt: skip
                if d == 5:  # a regeneration: a sibling of answer 5, and a vote between them
                    sibling = add(Message, **{**message, "id": new_id(), "content": "again"})
                    add(
                        Comparison, id=new_id(), user_id=user["id"],
                        conversation_id=conversation["id"], question_id=parent,
                        a_id=message["id"], b_id=sibling["id"], kind="regeneration",
                        a_variant="m", b_variant="m@t=1.0", winner="b", created_at=now,
                        voted_at=now,
                    )  # fmt: skip
                if d % 2:
                    add(
                        Usage, user_id=user["id"], message_id=message["id"], model="m",
                        prompt_tokens=d, completion_tokens=2, latency_ms=3,
                        ttft_ms=None if d == 1 else 7, finish_reason="stop", created_at=now,
                        plan="roomy", cached=d == 3,
                    )  # fmt: skip
                if d == 7:
                    add(
                        Rating, message_id=message["id"], user_id=user["id"], rating=-1,
                        reasons=["wrong"], comment="nope", created_at=now, updated_at=now,
                    )  # fmt: skip
                    add(
                        Credit, user_id=user["id"], signal="rating", subject_id=message["id"],
                        tokens=100, status="granted", created_at=now, changed_at=now,
                        expires_at=now + timedelta(days=7),
                    )  # fmt: skip
                parent = message["id"]
            conversation["current_leaf_id"] = parent
    add(
        AuditEntry, at=now, actor_id=None, actor_email="admin@x", action="ban", target="u",
        details={"z": 1, "a": [1, None, "ü"]},
    )  # fmt: skip
    add(AbuseReport, created_at=now, kind="k", subject="s", response="throttle", evidence={})
    add(Deletion, at=now, kind="conversation", subject_id=new_id())
    add(Invite, token_hash="f" * 64, email="i@x", plan="free", created_at=now, expires_at=now)
    async with db.transaction() as session:
        for table in Base.metadata.sorted_tables:
            for model, values in rows.items():
                if model.__table__ is table:  # type: ignore[attr-defined]
                    await session.execute(insert(model), values)


def seeded_sqlite(data_dir: Path, **sizes: int) -> str:
    url = f"sqlite+aiosqlite:///{data_dir / 'lamplighter.db'}"
    migrate.upgrade(url)

    async def fill() -> None:
        db = Database(url)
        try:
            await seed(db, **sizes)
        finally:
            await db.close()

    asyncio.run(fill())
    return url


@pytest.fixture
def target() -> Iterator[str]:
    """A new, empty PostgreSQL database (no tables): the place to move to."""
    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    name = f"lamplighter_copy_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    asyncio.run(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def copy(source: str, target: str, data_dir: Path, **options: Any) -> Any:
    options.setdefault("offline", True)
    return asyncio.run(copy_store(source, target, data_dir, CopyOptions(**options)))


# --- copying a store that nobody writes to -----------------------------------------------------


@pytest.mark.postgres
def test_a_copy_keeps_ids_trees_and_values_and_moves_sequences_on(
    tmp_path: Path, target: str
) -> None:
    source = seeded_sqlite(tmp_path)
    report = copy(source, target, tmp_path, batch=7)  # small batches: many keyset pages
    assert report.ok, report.tables
    assert report.copied_rows == sum(t.source_rows for t in report.tables) > 300
    # The same rows, compared afresh.
    again = asyncio.run(Copier(source, target, tmp_path).compare())
    assert all(t.ok for t in again) and {t.table for t in again} == {
        s.name for s in specs(Base.metadata)
    }
    with sqlite3.connect(tmp_path / "lamplighter.db") as sqlite:
        tree = sqlite.execute(
            "SELECT id, parent_id, conversation_id, depth FROM messages ORDER BY id"
        ).fetchall()
        leaves = sqlite.execute("SELECT id, current_leaf_id FROM conversations").fetchall()
        # The capture triggers and their log are gone.
        leftovers = sqlite.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '_lamplighter_copy%'"
        ).fetchall()
    assert leftovers == []
    moved = asyncio.run(
        _fetch(target, "SELECT id, parent_id, conversation_id, depth FROM messages ORDER BY id")
    )
    assert [(r[0].hex, r[1] and r[1].hex, r[2].hex, r[3]) for r in moved] == tree
    moved_leaves = asyncio.run(_fetch(target, "SELECT id, current_leaf_id FROM conversations"))
    assert sorted((r[0].hex, r[1].hex) for r in moved_leaves) == sorted(leaves)
    # The next usage id follows the copied ones.
    (top,) = asyncio.run(_fetch(target, "SELECT max(id) FROM usage"))
    user = asyncio.run(_fetch(target, "SELECT id FROM users LIMIT 1"))[0][0]
    (fresh,) = asyncio.run(
        _fetch(
            target,
            "INSERT INTO usage (user_id, model, prompt_tokens, completion_tokens, latency_ms, "
            "finish_reason, created_at, cached) VALUES ($1, 'm', 1, 1, 1, 'stop', now(), false) "
            "RETURNING id",
            user,
        )
    )
    assert fresh[0] == top[0] + 1
    # And a copy that does not match is caught.
    asyncio.run(_fetch(target, "UPDATE messages SET content = 'tampered' WHERE depth = 4"))
    asyncio.run(_fetch(target, "DELETE FROM usage WHERE id = $1", fresh[0]))
    asyncio.run(_fetch(target, "DELETE FROM deletions"))
    differing = {
        t.table for t in asyncio.run(Copier(source, target, tmp_path).compare()) if not t.ok
    }
    assert differing == {"messages", "deletions"}


@pytest.mark.postgres
def test_a_target_with_rows_is_refused_and_resume_reconciles_it(
    tmp_path: Path, target: str
) -> None:
    source = seeded_sqlite(tmp_path)
    assert copy(source, target, tmp_path).ok
    (expected_fks,) = asyncio.run(
        _fetch(target, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
    )
    # The source moves on, and the target is left as an interrupted copy would leave it: some
    # rows missing, some stale, one too many, and its foreign keys set aside.
    with sqlite3.connect(tmp_path / "lamplighter.db") as sqlite:
        sqlite.execute("PRAGMA foreign_keys=ON")
        sqlite.execute("UPDATE messages SET content = 'edited' WHERE depth = 2")
        sqlite.execute(
            "DELETE FROM conversations WHERE rowid IN (SELECT rowid FROM conversations LIMIT 2)"
        )
        sqlite.execute(
            "INSERT INTO users (id, email, is_admin, plan, created_at, banned) "
            "VALUES (?, 'late@example.org', 0, 'free', '2026-01-01 00:00:00.000000', 0)",
            (new_id().hex,),
        )

    async def interrupt() -> None:
        copier = Copier(source, target, tmp_path)
        await copier.target.open()
        try:
            await copier.target.drop_foreign_keys()
            await copier.target.write.execute("DELETE FROM messages WHERE depth > 6")
            await copier.target.write.execute("UPDATE users SET plan = 'stale'")
            await copier.target.write.execute(
                "INSERT INTO deletions (at, kind, subject_id) VALUES (now(), 'user', $1)", new_id()
            )
        finally:
            await copier.target.close()

    asyncio.run(interrupt())
    with pytest.raises(CopyRefused, match=r"already has rows.*--resume"):
        copy(source, target, tmp_path)
    report = copy(source, target, tmp_path, resume=True, batch=5)
    assert report.ok, [t for t in report.tables if not t.ok]
    assert all(t.ok for t in asyncio.run(Copier(source, target, tmp_path).compare()))
    (fks,) = asyncio.run(_fetch(target, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"))
    assert fks[0] == expected_fks[0]
    assert asyncio.run(_fetch(target, "SELECT to_regclass($1)", SET_ASIDE))[0][0] is None


@pytest.mark.postgres
def test_what_cannot_be_copied_is_refused_before_anything_changes(
    tmp_path: Path, target: str
) -> None:
    with pytest.raises(CopyRefused, match="postgresql://"):
        copy(f"sqlite+aiosqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db", tmp_path)
    with pytest.raises(CopyRefused, match="no SQLite database"):
        copy(f"sqlite+aiosqlite:///{tmp_path}/missing.db", target, tmp_path)
    with pytest.raises(CopyRefused, match="moves a SQLite store"):
        copy(target, target, tmp_path)
    behind = tmp_path / "behind"
    behind.mkdir()
    migrate.upgrade(f"sqlite+aiosqlite:///{behind}/lamplighter.db", "0010")
    with pytest.raises(CopyRefused, match="at migration 0010"):
        copy(f"sqlite+aiosqlite:///{behind}/lamplighter.db", target, behind)
    assert asyncio.run(_fetch(target, "SELECT to_regclass('users')"))[0][0] is None
    source = seeded_sqlite(tmp_path, users=1, conversations=1, depth=2)
    missing = target.rsplit("/", 1)[0] + "/lamplighter_never_created"
    with pytest.raises(CopyRefused, match=r'cannot open .*"lamplighter_never_created" does not'):
        copy(source, missing, tmp_path)
    assert readonly.read_flag(tmp_path) is None  # never made read-only


@pytest.mark.postgres
def test_without_a_server_to_drain_the_copy_fails_and_lifts_read_only(
    tmp_path: Path, target: str
) -> None:
    source = seeded_sqlite(tmp_path, users=1, conversations=1, depth=2)
    with pytest.raises(CopyFailed, match="--offline"):
        copy(source, target, tmp_path, offline=False, drain_timeout=0.3)
    assert readonly.read_flag(tmp_path) is None
    with sqlite3.connect(tmp_path / "lamplighter.db") as sqlite:
        assert sqlite.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                              "AND name LIKE '_lamplighter_copy%'").fetchone() == (0,)  # fmt: skip


@pytest.mark.postgres
def test_the_command_prints_a_verified_report_and_exits_non_zero_when_refused(
    tmp_path: Path, target: str
) -> None:
    seeded_sqlite(tmp_path, users=2, conversations=2, depth=6)  # 7 messages each: a branch

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
        env["LAMPLIGHTER_DATA_DIR"] = str(tmp_path)
        return subprocess.run(
            [sys.executable, "-m", "lamplighter", "db", "copy", "--to", target, *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    done = run("--offline", "--json", "--batch", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["target"] == target
    assert {t["table"]: t["target_rows"] for t in report["tables"]}["messages"] == 2 * 2 * 7
    refused = run("--offline")
    assert refused.returncode == 2 and "already has rows" in refused.stderr
    resumed = run("--offline", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "read-only for" in resumed.stdout
    assert f"LAMPLIGHTER_DATABASE_URL={target}" in resumed.stdout


# --- the real thing: a serving instance under load --------------------------------------------


class Browser:
    """What the chat page does over HTTP: log in, then call /api with the CSRF token."""

    def __init__(self, base_url: str, email: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        page = self.http.get("/login").text
        form = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert form is not None
        response = self.http.post(
            "/login", data={"email": email, "password": PASSWORD, "csrf_token": form.group(1)}
        )
        assert response.status_code == 303, response.text
        meta = re.search(r'name="csrf-token" content="([^"]+)"', self.http.get("/").text)
        assert meta is not None
        self.csrf = meta.group(1)

    def tree(self, conversation: uuid.UUID) -> dict[str, Any]:
        response = self.http.get(f"/api/conversations/{conversation}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def delete(self, conversation: uuid.UUID) -> httpx.Response:
        return self.http.delete(
            f"/api/conversations/{conversation}", headers={"x-csrf-token": self.csrf}
        )

    def close(self) -> None:
        self.http.close()


@dataclass
class Load:
    """Chat requests in a loop, as a client sends them: multi-turn conversations, streamed or
    not, and now and then a conversation deleted. Keeps what the server acknowledged."""

    server: LiveServer
    key: str
    email: str
    stream: bool
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: dict[str, str] = field(default_factory=dict)  # completion id -> answer
    # Conversations kept: the completion ids in each, and the messages a client would resend.
    conversations: list[tuple[list[str], list[dict[str, str]]]] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # completion ids whose conversation went
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        client = openai.OpenAI(
            base_url=self.server.base_url + "/v1", api_key=self.key, max_retries=0, timeout=30
        )
        web = Browser(self.server.base_url, self.email)
        ids: list[str] = []
        history: list[dict[str, str]] = []
        turn = 0
        try:
            while not self.stop.is_set():
                turn += 1
                if len(history) >= 6:
                    self.conversations.append((ids, history))
                    ids, history = [], []
                question = {"role": "user", "content": f"question {turn} from {self.email}"}
                try:
                    completion_id, answer = self._ask(client, [*history, question])
                except openai.APIStatusError as exc:
                    if exc.status_code == 503 and "read_only" in exc.response.text:
                        assert exc.response.headers["retry-after"] == "5"
                        self.refused += 1
                        time.sleep(0.02)  # a real client waits retry-after; this one is eager
                    else:
                        self.errors.append(f"{exc.status_code} {exc.response.text}")
                    continue
                self.acknowledged[completion_id] = answer
                ids.append(completion_id)
                history += [question, {"role": "assistant", "content": answer}]
                if turn % 7 == 0 and self._delete(web, completion_id):
                    self.deleted.update(ids)
                    ids, history = [], []
        finally:
            if ids:
                self.conversations.append((ids, history))
            web.close()
            client.close()

    def _ask(self, client: openai.OpenAI, messages: list[Any]) -> tuple[str, str]:
        if not self.stream:
            done = client.chat.completions.create(model=SCRIPTED, messages=messages)
            return done.id, done.choices[0].message.content or ""
        parts, ident = [], ""
        for chunk in client.chat.completions.create(model=SCRIPTED, messages=messages, stream=True):
            ident = chunk.id
            parts += [choice.delta.content or "" for choice in chunk.choices]
        return ident, "".join(parts)

    def _delete(self, web: Browser, completion_id: str) -> bool:
        """Delete the conversation this answer is in, through the web API."""
        conversation = self.server.call(lambda s: _conversation_of(s, completion_id))
        return web.delete(conversation).status_code == 204


async def _conversation_of(services: Any, completion_id: str) -> uuid.UUID:
    message = uuid.UUID(completion_id.removeprefix("chatcmpl-"))
    async with services.db.transaction() as session:
        found = await session.scalar(select(Message.conversation_id).where(Message.id == message))
    return uuid.UUID(str(found))


def _live(settings: Settings) -> LiveServer:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    return LiveServer(settings, backends)


@pytest.mark.postgres
def test_a_serving_instance_moves_to_postgresql_under_load(tmp_path: Path, target: str) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text(ROOMY_PLAN)
    settings = make_settings(tmp_path, config=config)
    people = []
    with _live(settings) as old:
        for _ in range(2):
            email = f"load-{uuid.uuid4().hex[:8]}@example.org"
            old.call(lambda s, e=email: s.accounts.create_user(e, password=PASSWORD, plan="roomy"))
            people.append(
                (email, old.call(lambda s, e=email: s.accounts.create_key(e, "k")).secret)
            )
        # A store with some history (about 12,000 rows), so the bulk copy takes a while.
        old.call(lambda s: seed(s.db, users=12, conversations=25, depth=30))
        loads = [Load(old, key, email, stream=n % 2 == 0) for n, (email, key) in enumerate(people)]
        threads = [threading.Thread(target=load.run) for load in loads]
        for thread in threads:
            thread.start()
        while sum(len(load.acknowledged) for load in loads) < 10:  # serving before the copy
            time.sleep(0.01)
        watcher = Browser(old.base_url, people[0][0])

        started = time.perf_counter()
        report = asyncio.run(
            copy_store(
                settings.resolved_database_url,
                target,
                tmp_path,
                CopyOptions(batch=500, settle_rows=20),
                progress=print,
            )
        )
        took = time.perf_counter() - started
        # The old server stays read-only: writes are refused, reads still served.
        refused = httpx.post(f"{old.base_url}/v1/chat/completions", json={})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "read_only"
        assert "moved to a new database" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "5"
        # ...and is taken out of load balancers: its readiness says the store moved.
        unready = httpx.get(f"{old.base_url}/readyz")
        assert unready.status_code == 503 and unready.json()["status"] == "moved"
        for load in loads:
            load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        kept_ids, kept = loads[0].conversations[0]
        conversation = old.call(lambda s: _conversation_of(s, kept_ids[-1]))
        before = watcher.tree(conversation)
        watcher.close()

    acknowledged = {k: v for load in loads for k, v in load.acknowledged.items()}
    deleted = {k for load in loads for k in load.deleted}
    print(
        f"\ncopy took {took:.1f} s; {report.copied_rows} rows in bulk at "
        f"{report.rows_per_second:,.0f} rows/s; catch-up passes {report.passes}; "
        f"read-only {report.read_only_seconds:.3f} s; {len(acknowledged)} answers acknowledged "
        f"({len(deleted)} of them deleted since), "
        f"{sum(load.refused for load in loads)} requests refused while read-only"
    )
    assert report.ok, [t for t in report.tables if not t.ok]
    assert not [e for load in loads for e in load.errors]
    assert report.read_only_seconds < 2.0
    assert sum(report.passes) > 0, "nothing was written during the copy: not a live test"
    # Every answer the clients saw is in PostgreSQL as they saw it, unless they deleted its
    # conversation, and then it is not.
    stored = {
        f"chatcmpl-{row[0].hex}": (row[1], row[2])
        for row in asyncio.run(
            _fetch(target, "SELECT id, content, status FROM messages WHERE role = 'assistant'")
        )
    }
    for completion_id, answer in acknowledged.items():
        if completion_id in deleted:
            assert completion_id not in stored
        else:
            assert stored.get(completion_id) == (answer, "complete"), completion_id

    # A server started on PostgreSQL from the same data directory (whose READ_ONLY names the
    # old database, so it does not apply) serves the same conversation, and continues it.
    settings_pg = make_settings(tmp_path, config=config, database_url=target)
    with _live(settings_pg) as new:
        web = Browser(new.base_url, people[0][0])
        assert web.tree(conversation) == before
        client = new.client(people[0][1])
        more = client.chat.completions.create(
            model=SCRIPTED, messages=[*kept, {"role": "user", "content": "after the move"}]
        )
        after = web.tree(conversation)
        by_id = {m["id"]: m for m in after["messages"]}
        answer = by_id[str(uuid.UUID(more.id.removeprefix("chatcmpl-")))]
        question = by_id[answer["parent_id"]]
        assert question["content"] == "after the move"
        assert question["parent_id"] == before["current_leaf_id"]
        assert len(after["messages"]) == len(before["messages"]) + 2
        web.close()


def test_json_of_the_report_is_plain() -> None:
    from lamplighter.store.copy import CopyReport, TableResult

    report = CopyReport("a", "b", "0011", [TableResult("users", 1, 1, "x", "x")], 1, 0.5)
    data = report.as_dict()
    assert json.loads(json.dumps(data))["ok"] is True
    assert data["tables"][0]["ok"] is True and data["rows_per_second"] == 2
