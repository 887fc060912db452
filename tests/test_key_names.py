"""An API key's name is checked wherever a key is made: SQLite would store a name longer than
its column, which PostgreSQL refuses, and ``db copy`` would then fail on that row at every try."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lamplighter.accounts import AccountService
from lamplighter.exceptions import InvalidRequest
from lamplighter.store.database import Database
from tests.test_cli import cli


def test_keys_create_refuses_a_name_longer_than_the_column_in_one_line(tmp_path: Path) -> None:
    assert cli(tmp_path, "users", "create", "ada@example.org").exit_code == 0
    refused = cli(tmp_path, "keys", "create", "ada@example.org", "--name", "k" * 201)
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --name: a key's name may be at most 200 characters; this one has 201"
    ]
    assert refused.stdout == ""  # no secret printed
    assert cli(tmp_path, "keys", "list", "ada@example.org").stdout == ""  # nor a key made
    longest = cli(tmp_path, "keys", "create", "ada@example.org", "--name", "k" * 200)
    assert longest.exit_code == 0, longest.stderr
    # Whitespace is collapsed before counting, as the web settings page does.
    pasted = cli(tmp_path, "keys", "create", "ada@example.org", "--name", " ci \n\n" + "x" * 196)
    assert pasted.exit_code == 0, pasted.stderr
    listed = cli(tmp_path, "keys", "list", "ada@example.org").stdout
    assert "ci xxx" in listed and "\n\n" not in listed


async def test_every_way_of_making_a_key_refuses_a_long_name_as_a_bad_request(
    database_url: str,
) -> None:
    """On PostgreSQL too: a clear 400-kind error naming the field, not the database's
    "value too long"."""
    db = Database(database_url)
    accounts = AccountService(db)
    try:
        email = f"{uuid.uuid4().hex[:12]}@example.org"
        user = await accounts.create_user(email)
        with pytest.raises(InvalidRequest, match="at most 200 characters; this one has 300") as e:
            await accounts.create_key(email, "k" * 300)
        assert e.value.param == "name"
        with pytest.raises(InvalidRequest, match="NUL") as e:
            await accounts.create_key(email, "lap\x00top")
        assert e.value.param == "name"
        assert await accounts.keys_of(email) == []
        made = await accounts.create_key(email, "  build\tserver  ")
        (key,) = await accounts.keys_of(email)
        assert (key.id, key.user_id, key.name) == (made.id, user.id, "build server")
    finally:
        await db.close()
