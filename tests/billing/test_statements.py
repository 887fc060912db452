"""Statements: usage per user (and team) in a month, from the usage ledger, as CSV; through the
service on SQLite and PostgreSQL, and through ``lamplighter billing statement``."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from lamplighter.billing import statements
from lamplighter.cli import app
from lamplighter.exceptions import InvalidRequest
from lamplighter.settings import load_settings
from lamplighter.store.database import Database
from lamplighter.store.models import Usage, User
from lamplighter.store.usage import UsageLedger
from tests.billing.conftest import PRICED_TOML, Setup

MONTH = "2031-03"
START = datetime(2031, 3, 1, tzinfo=UTC)


async def _spend(db: Database, user: User, plan: str, at: datetime, prompt: int, done: int) -> None:
    async with db.transaction() as session:
        await UsageLedger(session).record(
            {
                "user_id": user.id, "model": "m", "prompt_tokens": prompt,
                "completion_tokens": done, "latency_ms": 1, "finish_reason": "stop",
                "created_at": at, "plan": plan,
            }
        )  # fmt: skip


async def _ledger_totals(db: Database) -> tuple[int, int, int]:
    end = statements.period(MONTH).end
    async with db.transaction() as session:
        found = (
            await session.execute(
                select(
                    func.count(), func.sum(Usage.prompt_tokens), func.sum(Usage.completion_tokens)
                ).where(Usage.created_at >= START, Usage.created_at < end)
            )
        ).one()
    return int(found[0]), int(found[1] or 0), int(found[2] or 0)


def _totals(rows: list[dict[str, str]]) -> tuple[int, int, int]:
    return (
        sum(int(r["requests"]) for r in rows),
        sum(int(r["prompt_tokens"]) for r in rows),
        sum(int(r["completion_tokens"]) for r in rows),
    )


async def _statement(setup: Setup, team: str | None = None) -> list[dict[str, str]]:
    when = statements.period(MONTH)
    team_id = await statements.team_id(setup.db, team)
    values = [v async for v in statements.rows(setup.db, setup.billing.plans, when, team_id)]
    text = "".join(statements.csv_lines(values))
    return list(csv.DictReader(io.StringIO(text)))


async def test_a_statement_adds_up_to_the_usage_ledger(setup: Setup) -> None:
    ada, bob, cy = [
        await setup.accounts.create_user(f"s-{uuid.uuid4().hex[:8]}-{n}@example.org")
        for n in ("ada", "bob", "cy")
    ]
    team = f"team-{uuid.uuid4().hex[:8]}"
    await setup.billing.create_team(team, ada.email)
    await setup.billing.add_member(team, bob.email)
    # Inside the month: the first instant and the last second; outside: just before and after.
    await _spend(setup.db, ada, "silver", START, 10, 20)
    await _spend(setup.db, ada, "gold", START + timedelta(days=9), 1, 2)
    await _spend(setup.db, ada, "gold", START + timedelta(days=30, hours=23, minutes=59), 3, 4)
    await _spend(setup.db, bob, "bronze", START + timedelta(days=3), 100, 200)
    await _spend(setup.db, cy, "free", START + timedelta(days=4), 7, 8)
    await _spend(setup.db, cy, "free", START - timedelta(seconds=1), 1000, 1000)
    await _spend(setup.db, cy, "free", START + timedelta(days=31), 1000, 1000)

    rows = await _statement(setup)
    assert _totals(rows) == await _ledger_totals(setup.db)
    mine = {
        (r["email"], r["plan"]): r for r in rows if r["email"] in {ada.email, bob.email, cy.email}
    }
    assert set(mine) == {
        (ada.email, "silver"), (ada.email, "gold"), (bob.email, "bronze"), (cy.email, "free"),
    }  # fmt: skip
    gold = mine[(ada.email, "gold")]
    assert (gold["requests"], gold["total_tokens"], gold["team"]) == ("2", "10", team)
    assert (gold["plan_price"], gold["currency"], gold["period"]) == ("5000", "usd", MONTH)
    assert mine[(cy.email, "free")]["team"] == "" and mine[(cy.email, "free")]["plan_price"] == "0"
    silver = mine[(ada.email, "silver")]
    assert silver["plan_price"] == "2000"

    only_team = await _statement(setup, team)
    assert {r["email"] for r in only_team} == {ada.email, bob.email}
    assert _totals(only_team) == (4, 114, 226)
    with pytest.raises(InvalidRequest):
        statements.period("2031-13")


def test_the_command_writes_a_team_statement_and_grants_plans(tmp_path: Path) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text(PRICED_TOML)
    env = {"LAMPLIGHTER_DATA_DIR": str(tmp_path), "LAMPLIGHTER_CONFIG": str(config)}
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    for email in ("ada@example.org", "bob@example.org"):
        run("users", "create", email)
    run("teams", "create", "owls", "--owner", "ada@example.org")
    run("teams", "add", "owls", "bob@example.org")
    assert "granted gold to owls" in run(
        "billing", "grant", "--team", "owls", "--plan", "gold", "--months", "1", "--seats", "2"
    )
    refused = runner.invoke(app, ["billing", "grant", "--plan", "gold", "--days", "3"], env=env)
    assert refused.exit_code == 2
    shown = run("teams", "show", "owls")
    assert "gold, 2 seats, active" in shown and shown.count("seat") == 3

    url = load_settings(env=env).resolved_database_url

    async def spend() -> tuple[int, int, int]:
        db = Database(url)
        try:
            async with db.transaction() as session:
                users = (await session.execute(select(User).order_by(User.email))).scalars().all()
                assert [u.plan for u in users] == ["gold", "gold"]
            for user in users:
                await _spend(db, user, user.plan, START + timedelta(days=2), 5, 6)
            return await _ledger_totals(db)
        finally:
            await db.close()

    ledger = asyncio.run(spend())
    out = tmp_path / "statement.csv"
    run("billing", "statement", "--period", MONTH, "--team", "owls", "--out", str(out))
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert _totals(rows) == ledger == (2, 10, 12)
    assert {(r["email"], r["team"], r["plan"]) for r in rows} == {
        ("ada@example.org", "owls", "gold"), ("bob@example.org", "owls", "gold"),
    }  # fmt: skip
    missing = runner.invoke(
        app, ["billing", "statement", "--period", MONTH, "--team", "nope"], env=env
    )
    assert missing.exit_code == 1 and "no team named" in missing.output
