"""The store on SQLite and PostgreSQL: migrations both ways, id widths, accounts and the ledger."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import inspect, text

from lamplighter.accounts import AccountService
from lamplighter.credentials import verify_password
from lamplighter.exceptions import AuthenticationFailed, Conflict
from lamplighter.store import migrate
from lamplighter.store.accounts import Accounts
from lamplighter.store.database import Database
from lamplighter.store.models import Base


def _email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.org"


def test_migrations_run_down_and_up_again_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    migrate.upgrade(url)  # idempotent


@pytest.mark.postgres
def test_migrations_run_down_and_up_again_on_postgresql(postgres_url: str) -> None:
    migrate.downgrade(postgres_url, "base")
    migrate.upgrade(postgres_url)


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            columns = await conn.run_sync(
                lambda sync: {
                    t: {c["name"] for c in inspect(sync).get_columns(t)}
                    for t in Base.metadata.tables
                }
            )
        assert set(Base.metadata.tables) <= tables
        for name, table in Base.metadata.tables.items():
            assert columns[name] == {c.name for c in table.columns}, name
    finally:
        await db.close()


@pytest.mark.postgres
async def test_ids_are_never_32_bit_on_postgresql(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        async with db.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT table_name, data_type FROM information_schema.columns "
                    "WHERE column_name = 'id' AND table_schema = 'public'"
                )
            )
            kinds = dict(rows.all())
        assert kinds.pop("usage") == "bigint"
        assert kinds.pop("audit_log") == "bigint"
        assert kinds.pop("abuse_reports") == "bigint"
        assert kinds.pop("deletions") == "bigint"
        assert kinds.pop("credits") == "bigint"
        assert kinds.pop("export_runs") == "bigint"
        # A payment provider's own event id ("stripe:evt_..."), not a number of ours.
        assert kinds.pop("billing_events") == "character varying"
        assert set(kinds.values()) == {"uuid"}
    finally:
        await db.close()


async def test_accounts_keys_and_passwords(database_url: str) -> None:
    db = Database(database_url)
    accounts = AccountService(db)
    try:
        email = _email()
        user = await accounts.create_user(email.upper(), password="a long passphrase")
        assert user.email == email
        assert user.id.version == 7
        assert user.password_hash and user.password_hash.startswith("$argon2id$")
        assert verify_password(user.password_hash, "a long passphrase")
        assert not verify_password(user.password_hash, "wrong")
        with pytest.raises(Conflict):
            await accounts.create_user(email)

        key = await accounts.create_key(email, "ci")
        who = await accounts.authenticate(key.secret)
        assert (who.user_id, who.api_key_id, who.plan) == (user.id, key.id, "free")
        async with db.transaction() as session:
            (stored,) = await Accounts(session).keys_of(user.id)
        assert stored.last_used_at is not None and stored.key_hash != key.secret
        await accounts.revoke_key(key.id)
        with pytest.raises(AuthenticationFailed):
            await accounts.authenticate(key.secret)
        with pytest.raises(AuthenticationFailed):
            await accounts.authenticate(key.secret + "x")
    finally:
        await db.close()


async def test_concurrent_key_use_is_safe(database_url: str) -> None:
    import asyncio

    db = Database(database_url)
    accounts = AccountService(db)
    try:
        email = _email()
        await accounts.create_user(email)
        key = await accounts.create_key(email)
        results = await asyncio.gather(*(accounts.authenticate(key.secret) for _ in range(20)))
        assert {r.api_key_id for r in results} == {key.id}
    finally:
        await db.close()


async def test_deleting_an_answer_prunes_its_branch_and_moves_the_shown_leaf(
    database_url: str,
) -> None:
    """root question -> answer A -> follow-up -> answer B (shown) and, beside B, answer C: deleting
    B keeps C and shows it; deleting A takes the rest and, nothing being left, the conversation."""
    from sqlalchemy import select

    from lamplighter.store.conversations import Conversations
    from lamplighter.store.models import Conversation, Message, Rating, new_id

    db = Database(database_url)
    try:
        user = await AccountService(db).create_user(_email())
        conversation = Conversation(id=new_id(), user_id=user.id)
        rows: dict[str, Message] = {}
        parents = {"q": None, "a": "q", "f": "a", "b": "f", "c": "f"}
        async with db.transaction() as session:
            session.add(conversation)
            for depth, (name, parent) in enumerate(parents.items()):
                rows[name] = Message(
                    id=new_id(),
                    conversation_id=conversation.id,
                    user_id=user.id,
                    parent_id=rows[parent].id if parent else None,
                    role="user" if name in "qf" else "assistant",
                    content=name,
                    path_hash=name,
                    depth=depth,
                )
                session.add(rows[name])
                await session.flush()
            session.add(Rating(message_id=rows["b"].id, user_id=user.id, rating=1))
            conversation.current_leaf_id = rows["b"].id

        async def delete(name: str) -> tuple[set[uuid.UUID], uuid.UUID | None]:
            async with db.transaction() as session:
                answer = await session.get(Message, rows[name].id)
                assert answer is not None
                deleted = await Conversations(session).delete_answer(answer)
            return set(deleted.answers), deleted.conversation

        async def left() -> tuple[list[str], str | None]:
            async with db.transaction() as session:
                kept = await session.execute(
                    select(Message.content)
                    .where(Message.conversation_id == conversation.id)
                    .order_by(Message.id)
                )
                shown = await session.get(Conversation, conversation.id)
                leaf = await session.get(Message, shown.current_leaf_id) if shown else None
                return [content for (content,) in kept], leaf.content if leaf else None

        assert await delete("b") == ({rows["b"].id}, None)
        assert await left() == (["q", "a", "f", "c"], "c")
        assert await delete("a") == ({rows["a"].id, rows["c"].id}, conversation.id)
        assert await left() == ([], None)
        async with db.transaction() as session:
            assert await session.get(Rating, rows["b"].id) is None
            assert await session.get(Conversation, conversation.id) is None
    finally:
        await db.close()


async def test_a_path_is_one_branch_root_first_in_one_query(database_url: str) -> None:
    """A 200-turn conversation with a branch at every tenth turn: the path to a leaf is exactly
    its branch, root first, read in one statement (the web chat and the Responses API read it
    on every turn)."""
    from sqlalchemy import event

    from lamplighter.store.conversations import Conversations
    from lamplighter.store.models import Conversation, Message, new_id

    db = Database(database_url)
    try:
        user = await AccountService(db).create_user(_email())
        conversation = Conversation(id=new_id(), user_id=user.id)
        branch: list[uuid.UUID] = []
        async with db.transaction() as session:
            session.add(conversation)
            parent = None
            for depth in range(200):
                side = [Message(id=new_id(), content=f"side {depth}")] if depth % 10 == 0 else []
                main = Message(id=new_id(), content=f"turn {depth}")
                for message in (*side, main):
                    message.conversation_id, message.user_id = conversation.id, user.id
                    message.parent_id, message.depth = parent, depth
                    message.role = "user" if depth % 2 == 0 else "assistant"
                    message.path_hash = message.content
                    session.add(message)
                await session.flush()
                parent = main.id
                branch.append(main.id)

        statements: list[str] = []

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(db.engine.sync_engine, "before_cursor_execute", count)
        async with db.transaction() as session:
            path = await Conversations(session).path_to(branch[149])
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        assert [m.id for m in path] == branch[:150]
        assert [m.content for m in path[:2]] == ["turn 0", "turn 1"]
        assert len([s for s in statements if "messages" in s]) == 1
    finally:
        await db.close()
