"""The ``lamplighter`` command as an operator uses it: real processes, a real data directory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import Result
from typer.testing import CliRunner

from lamplighter.accounts import Bootstrap
from lamplighter.app import announce_bootstrap
from lamplighter.cli import app
from tests.conftest import MODEL, LiveServer, free_port, make_settings

LAMPLIGHTER = [sys.executable, "-m", "lamplighter"]


def run(
    data_dir: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, with ``env``'s settings and no others but the data
    directory."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
    clean |= {"LAMPLIGHTER_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [*LAMPLIGHTER, *args], env=clean, input=stdin, capture_output=True, text=True, timeout=60
    )


def cli(
    data_dir: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """The command run in this process: what :func:`run` does without the ~2 s an interpreter
    takes to start and import here, for tests that run many commands."""
    settings: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LAMPLIGHTER_")}
    settings |= {"LAMPLIGHTER_DATA_DIR": str(data_dir), **(env or {})}
    return CliRunner().invoke(app, list(args), input=stdin, env=settings)


def test_users_and_keys_lifecycle(tmp_path: Path) -> None:
    assert cli(tmp_path, "db", "upgrade").exit_code == 0
    created = cli(
        tmp_path,
        "users",
        "create",
        "Ada@Example.org",
        "--admin",
        "--plan",
        "team",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert created.exit_code == 0, created.stderr
    assert "ada@example.org" in created.stdout
    duplicate = cli(tmp_path, "users", "create", "ada@example.org")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr

    listed = cli(tmp_path, "users", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["email"], r["plan"], r["admin"]) for r in rows] == [
        ("ada@example.org", "team", True)
    ]

    key = cli(tmp_path, "keys", "create", "ada@example.org", "--name", "laptop")
    assert key.exit_code == 0
    secret = key.stdout.strip()
    assert secret.startswith("ll-") and len(secret) > 40
    key_id = key.stderr.split()[2]
    # Stored only as a hash: the secret appears nowhere in the database file.
    database = (tmp_path / "lamplighter.db").read_bytes()
    for suffix in ("", "-wal"):
        path = tmp_path / f"lamplighter.db{suffix}"
        if path.exists():
            database += path.read_bytes()
    assert secret.encode() not in database

    assert cli(tmp_path, "keys", "revoke", key_id).exit_code == 0
    again = cli(tmp_path, "keys", "revoke", key_id)
    assert again.exit_code == 1 and "no live API key" in again.stderr
    assert cli(tmp_path, "keys", "revoke", "not-an-id").exit_code == 2
    assert cli(tmp_path, "keys", "create", "nobody@example.org").exit_code == 1


def test_admins_are_made_and_unmade_but_the_last_one_stays(tmp_path: Path) -> None:
    """An operator promotes and demotes admins and changes plans from the command line; the
    only admin can be neither demoted nor deleted (nobody could administer any more)."""
    assert cli(tmp_path, "users", "create", "admin@localhost", "--admin").exit_code == 0
    assert cli(tmp_path, "users", "create", "ops@example.org").exit_code == 0

    def admins() -> dict[str, tuple[str, bool]]:
        listed = cli(tmp_path, "users", "list", "--json").stdout.splitlines()
        return {u["email"]: (u["plan"], u["admin"]) for u in map(json.loads, listed)}

    for args in (["delete", "admin@localhost", "--yes"], ["set", "admin@localhost", "--no-admin"]):
        refused = cli(tmp_path, "users", *args)
        assert refused.exit_code == 1, refused.output
        assert "admin@localhost is the only admin" in refused.stderr
        assert "users set EMAIL --admin" in refused.stderr
    assert admins()["admin@localhost"] == ("free", True)

    promoted = cli(tmp_path, "users", "set", "OPS@example.org", "--admin", "--plan", "team")
    assert promoted.exit_code == 0, promoted.stderr
    assert promoted.stdout.strip() == "ops@example.org: plan team, admin"
    demoted = cli(tmp_path, "users", "set", "admin@localhost", "--no-admin")
    assert demoted.exit_code == 0, demoted.stderr
    assert admins() == {"admin@localhost": ("free", False), "ops@example.org": ("team", True)}
    assert cli(tmp_path, "users", "delete", "admin@localhost", "--yes").exit_code == 0
    refused = cli(tmp_path, "users", "delete", "ops@example.org", "--yes")
    assert refused.exit_code == 1 and "ops@example.org is the only admin" in refused.stderr

    unknown = cli(tmp_path, "users", "set", "ops@example.org", "--plan", "gold")
    assert unknown.exit_code == 1 and "known plans: free, plus, team" in unknown.stderr
    nothing = cli(tmp_path, "users", "set", "ops@example.org")
    assert nothing.exit_code == 2 and "--admin, --no-admin or --plan" in nothing.stderr
    nobody = cli(tmp_path, "users", "set", "nobody@example.org", "--admin")
    assert nobody.exit_code == 1 and "no user with email" in nobody.stderr


def test_bad_email_is_refused(tmp_path: Path) -> None:
    result = cli(tmp_path, "users", "create", "not an email")
    assert result.exit_code == 1 and "not an email address" in result.stderr


def test_a_plan_of_the_config_file_can_be_given_before_the_server_ever_ran(tmp_path: Path) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text("[plans.research]\nrequests_per_minute = 5\n")
    unknown = cli(tmp_path, "users", "create", "ann@example.org", "--plan", "nosuch")
    assert unknown.exit_code == 1
    assert "no plan named 'nosuch'; known plans: free, plus, team" in unknown.stderr

    created = cli(
        tmp_path,
        "users",
        "create",
        "bea@example.org",
        "--plan",
        "research",
        "--config",
        str(config),
    )
    assert created.exit_code == 0, created.stderr
    assert "plan research" in created.stdout
    invited = cli(
        tmp_path, "users", "invite", "cy@example.org", "--plan", "research", "--config", str(config)
    )
    assert invited.exit_code == 0, invited.stderr
    listed = cli(tmp_path, "users", "list")
    # Each line: id, email, plan.
    assert {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()} == {
        "bea@example.org": "research",
        "cy@example.org": "research",
    }

    config.write_text("[plans.research]\nrequests_per_minute = -1\n")
    refused = cli(tmp_path, "users", "create", "di@example.org", "--config", str(config))
    assert refused.exit_code == 2 and "[plans.research]" in refused.stderr


def test_a_grant_of_a_plan_that_does_not_exist_names_the_known_plans(tmp_path: Path) -> None:
    assert cli(tmp_path, "users", "create", "ada@example.org").exit_code == 0
    args = ["billing", "grant", "--user", "ada@example.org", "--days", "30"]
    refused = cli(tmp_path, *args, "--plan", "gold")
    assert refused.exit_code == 1
    assert "no plan named 'gold'; known plans: free, plus, team" in refused.stderr
    granted = cli(tmp_path, *args, "--plan", "plus")
    assert granted.exit_code == 0, granted.stderr


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two instances side by side, each on its own port and data directory."""
    processes = []
    instances = []
    for name in ("one", "two"):
        data_dir, port = tmp_path / name, free_port()
        env = {
            **os.environ,
            "LAMPLIGHTER_DATA_DIR": str(data_dir),
            "LAMPLIGHTER_PORT": str(port),
            "LAMPLIGHTER_N_THREADS": "1",
            "LAMPLIGHTER_DRAIN_GRACE": "0",  # no load balancer to wait for when it stops
        }
        process = subprocess.Popen(
            [*LAMPLIGHTER, "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        instances.append((data_dir, port, process))
    try:
        yield instances
    finally:
        for process in processes:
            process.terminate()
            process.communicate(timeout=30)


def wait_ready(port: int, process: subprocess.Popen[str]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()[1][-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)  # the server's exit ends the wait early
    raise AssertionError("server never became ready")


def test_serve_bootstraps_an_admin_and_instances_run_side_by_side(served) -> None:  # type: ignore[no-untyped-def]
    answers = []
    for data_dir, port, process in served:
        wait_ready(port, process)
        key = run(data_dir, "keys", "create", "admin@localhost").stdout.strip()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        answers.append(answer)
        assert [model.id for model in client.models.list()] == [MODEL]
        assert (data_dir / "lamplighter.db").exists()
    assert all(a.usage and a.usage.completion_tokens >= 1 for a in answers)
    for _, _, process in served:
        process.terminate()
        out, _ = process.communicate(timeout=30)
        assert "admin@localhost" in out and "password:" in out
        assert "lamplighter keys create admin@localhost" in out


def test_a_mistake_in_the_flywheel_table_is_an_error_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text("[flywheel]\nbogus = 1\n")
    result = cli(tmp_path, "credits", "review", "--config", str(config))
    assert result.exit_code == 2
    assert "error: unknown keys in [flywheel]: bogus" in result.stderr


@pytest.mark.parametrize(
    ("env", "args", "status", "said"),
    [
        (
            {"LAMPLIGHTER_DATABASE_URL": "postgresql://postgres@127.0.0.1:{closed}/x"},
            ["users", "list"],
            1,
            "error: cannot connect to the database",
        ),
        (
            {"LAMPLIGHTER_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/ll_no_such_db"},
            ["users", "list"],
            1,
            'error: the database refused: database "ll_no_such_db" does not exist',
        ),
        ({}, ["export", "sft", "--out", "/proc/lamplighter"], 1, "/proc/lamplighter"),
        (
            {"LAMPLIGHTER_SIGNUP_PLAN": "gold", "LAMPLIGHTER_EMBEDDED_ENGINE": "false"},
            ["serve", "--port", "{closed}"],
            2,
            "error: setting 'signup_plan': no plan named 'gold'; known plans: free, plus, team",
        ),
    ],
)
def test_operator_mistakes_are_an_error_line_not_a_traceback(
    tmp_path: Path, env: dict[str, str], args: list[str], status: int, said: str
) -> None:
    closed = str(free_port())  # nothing listens there
    env = {name: value.replace("{closed}", closed) for name, value in env.items()}
    result = run(tmp_path, *(arg.replace("{closed}", closed) for arg in args), env=env)
    assert result.returncode == status, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if not line.startswith("export sft:")] == [lines[-1]]


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ("plans = 3\n", "error: [plans] must be a table"),
        ("moderation = 3\n", "error: [moderation] must be a table"),
        ("[traffic]\ndegrade = 3\n", "error: [[traffic.degrade]]: "),
        ('[[backends]]\nname = "gpu"\n', "error: [[backends]] 'gpu': 'url' is required"),
    ],
)
def test_serve_names_a_mistake_in_the_config_tables_before_it_starts(
    tmp_path: Path, toml: str, said: str
) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text(toml)
    result = cli(tmp_path, "serve", "--config", str(config))
    assert result.exit_code == 2 and said in result.stderr, result.stderr


def test_serve_with_a_mistake_in_a_plan_says_so_in_one_line_and_starts_nothing(
    tmp_path: Path,
) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text("[plans.free]\nrequests_per_minute = -1\n")
    port = str(free_port())
    result = run(tmp_path, "serve", "--config", str(config), env={"LAMPLIGHTER_PORT": port})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: [plans.free]: requests_per_minute must be at least 1"
    ]
    assert result.stdout == ""  # no first admin announced: nothing started
    assert not (tmp_path / "lamplighter.db").exists()  # the file is checked before the database


def test_serve_migrates_the_database_and_loads_the_plans_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its check before the start (for a mistake to be one line) is the app's start itself,
    not a rehearsal of it: the app takes the database and plans it opened."""
    from lamplighter import logs
    from lamplighter.drain import GracefulServer
    from lamplighter.store import migrate
    from lamplighter.traffic.planbook import PlanBook

    done: list[str] = []
    upgrade, load = migrate.upgrade, PlanBook.load

    def counted_upgrade(url: str) -> None:
        done.append("migrate")
        upgrade(url)

    async def counted_load(self: PlanBook, configured: Any) -> None:
        done.append("plans")
        await load(self, configured)

    async def start_then_stop(self: GracefulServer, sockets: Any = None) -> None:
        app = self.config.app
        async with app.router.lifespan_context(app):  # the app's whole start, then its stop
            self.started = True
            done.append("started")

    monkeypatch.setattr(migrate, "upgrade", counted_upgrade)
    monkeypatch.setattr(PlanBook, "load", counted_load)
    monkeypatch.setattr(GracefulServer, "serve", start_then_stop)
    monkeypatch.setattr(logs, "configure_logging", lambda level: None)  # this process's logging
    result = cli(tmp_path, "serve", env={"LAMPLIGHTER_EMBEDDED_ENGINE": "false"})
    assert result.exit_code == 0, result.output
    assert done == ["migrate", "plans", "started"]


def test_a_copy_to_what_is_not_postgresql_and_a_failed_statement_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    copy = cli(tmp_path, "db", "copy", "--to", "notaurl", "--offline")
    assert copy.exit_code == 2 and "--to: use postgresql://" in copy.stderr
    out = tmp_path / "statement.csv"
    args = ["billing", "statement", "--period", "2026-11", "--team", "nope", "--out", str(out)]
    statement = cli(tmp_path, *args)
    assert statement.exit_code == 1 and "no team named 'nope'" in statement.stderr
    assert not out.exists()  # no empty statement to mistake for a month without usage


def test_commands_that_write_are_refused_while_db_copy_has_frozen_the_database(
    tmp_path: Path,
) -> None:
    """After `db copy`, the old store is read-only: a user created there would be lost at the
    switch-over, so commands that write say so; commands that read go on."""
    from lamplighter.readonly import freeze, settle, thaw

    assert cli(tmp_path, "users", "create", "ada@example.org").exit_code == 0
    flag = freeze(tmp_path, make_settings(tmp_path).resolved_database_url, "moving")
    late = cli(tmp_path, "users", "create", "late@example.org")
    assert late.exit_code == 1 and "this database is read-only" in late.stderr
    settle(tmp_path, flag, "postgresql://u:***@db.internal/lamplighter")  # verified: for good
    late = cli(tmp_path, "users", "create", "late@example.org")
    assert late.exit_code == 1 and "moved it to postgresql://u:***@db.internal/" in late.stderr
    assert cli(tmp_path, "keys", "create", "ada@example.org").exit_code == 1
    listed = cli(tmp_path, "users", "list")
    assert listed.exit_code == 0 and "ada@example.org" in listed.stdout
    assert "late@example.org" not in listed.stdout
    # What it read is the old copy, and the operator is told where the store is now.
    assert "moved this database to postgresql://u:***@db.internal/" in listed.stderr
    # An export writes the record of its run, which the moved store would never see.
    exported = cli(tmp_path, "export", "sft", "--out", str(tmp_path / "out"))
    assert exported.exit_code == 1 and "moved it to postgresql://" in exported.stderr
    thaw(tmp_path)  # rolled back: writable again
    assert cli(tmp_path, "users", "create", "late@example.org").exit_code == 0


def test_invite_links_are_built_on_the_public_url_and_can_be_made_again(tmp_path: Path) -> None:
    env = {"LAMPLIGHTER_PUBLIC_URL": "https://chat.example.org"}
    invited = cli(tmp_path, "users", "invite", "ada@example.org", env=env)
    assert invited.exit_code == 0, invited.stderr
    assert "  https://chat.example.org/invite/" in invited.stdout
    again = cli(tmp_path, "users", "invite", "ada@example.org", "--plan", "plus", env=env)
    assert again.exit_code == 0, again.stderr
    assert again.stdout.splitlines()[-1] != invited.stdout.splitlines()[-1]
    listed = [
        json.loads(line) for line in cli(tmp_path, "users", "list", "--json").stdout.splitlines()
    ]
    assert [(u["email"], u["plan"]) for u in listed] == [("ada@example.org", "plus")]

    cli(
        tmp_path, "users", "create", "bo@example.org", "--password-stdin", stdin="a fine password\n"
    )
    refused = cli(tmp_path, "users", "invite", "bo@example.org")
    assert refused.exit_code == 1 and "users reset-password bo@example.org" in refused.stderr
    reset = cli(tmp_path, "users", "reset-password", "bo@example.org", env=env)
    assert reset.exit_code == 0 and "  https://chat.example.org/invite/" in reset.stdout
    unknown = cli(tmp_path, "users", "reset-password", "nobody@example.org")
    assert unknown.exit_code == 1 and "no user with email nobody@example.org" in unknown.stderr


def test_a_link_without_a_public_url_says_which_address_it_assumes(tmp_path: Path) -> None:
    """The CLI's own host and port are no guide to where people reach the server (behind a
    proxy, in a container): a link built on them says so, and how to give the right one."""
    invited = cli(tmp_path, "users", "invite", "ada@example.org")
    assert invited.exit_code == 0, invited.stderr
    assert "  http://127.0.0.1:8080/invite/" in invited.stdout
    assert "LAMPLIGHTER_PUBLIC_URL is not set" in invited.stderr
    assert "assumes people reach the server at http://127.0.0.1:8080" in invited.stderr
    reset = cli(tmp_path, "users", "reset-password", "ada@example.org")
    assert reset.exit_code == 0 and "LAMPLIGHTER_PUBLIC_URL is not set" in reset.stderr
    env = {"LAMPLIGHTER_PUBLIC_URL": "https://chat.example.org/"}
    public = cli(tmp_path, "users", "reset-password", "ada@example.org", env=env)
    assert public.exit_code == 0 and "  https://chat.example.org/invite/" in public.stdout
    assert "LAMPLIGHTER_PUBLIC_URL" not in public.stderr


def test_the_first_admin_notice_names_the_database_but_not_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://lamplighter:s3cret-pw@db.internal:5432/lamplighter"
    announce_bootstrap(
        make_settings(tmp_path, database_url=url), Bootstrap("admin@localhost", "pw")
    )
    notice = capsys.readouterr().out
    assert (
        "LAMPLIGHTER_DATABASE_URL='postgresql://lamplighter:***@db.internal:5432/lamplighter'"
        in notice
    )
    assert "s3cret-pw" not in notice  # the notice goes to the logs


def test_restore_says_when_it_could_not_lift_a_ban_on_the_running_replicas(
    tmp_path: Path,
) -> None:
    """With Redis configured but out of reach, the account is restored in the database and the
    operator is told that running replicas keep a temporary ban (none hears the lift)."""
    assert cli(tmp_path, "db", "upgrade").exit_code == 0
    assert cli(tmp_path, "users", "create", "bo@example.org").exit_code == 0
    assert cli(tmp_path, "users", "ban", "bo@example.org", "--reason", "fraud").exit_code == 0
    env = {"LAMPLIGHTER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens
    restored = cli(tmp_path, "users", "restore", "bo@example.org", env=env)
    assert restored.exit_code == 0 and "restored bo@example.org" in restored.stdout
    assert "Redis could not be reached" in restored.stderr
    listed = cli(tmp_path, "users", "list", "--json").stdout.splitlines()
    assert json.loads(listed[0])["status"] == "active"


def test_an_operator_suspends_bans_and_restores_from_the_command_line(server: LiveServer) -> None:
    email, key = server.new_user()
    _, admin_key = server.new_user(admin=True)
    env = {"LAMPLIGHTER_CONFIG": str(server.settings.config)}
    data_dir = server.settings.data_dir

    def models() -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.get(server.base_url + "/v1/models", headers=headers)

    def listed() -> dict[str, Any]:
        rows = cli(data_dir, "users", "list", "--json", env=env).stdout.splitlines()
        [row] = [r for r in map(json.loads, rows) if r["email"] == email]
        return row

    assert models().status_code == 200 and listed()["status"] == "active"
    suspended = cli(data_dir, "users", "suspend", email, "--reason", "spam", "--days", "2", env=env)
    assert suspended.exit_code == 0, suspended.stderr
    refused = models()
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "account_suspended"
    assert listed()["status"] == "suspended" and listed()["until"] is not None

    assert cli(data_dir, "users", "ban", email, "--reason", "fraud", env=env).exit_code == 0
    assert models().json()["error"]["code"] == "account_deactivated"
    banned = listed()
    assert banned["status"] == "banned" and banned["until"] is None

    no_reason = cli(data_dir, "users", "ban", email, "--reason", " ", env=env)
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    restored = cli(data_dir, "users", "restore", email, env=env)
    assert restored.exit_code == 0 and models().status_code == 200
    assert listed()["status"] == "active"

    # Each change is in the audit log, by the operating-system user on this machine.
    audit = httpx.get(
        server.base_url + "/api/admin/audit", headers={"authorization": f"Bearer {admin_key}"}
    ).json()["data"]
    mine = [(e["action"], e["details"].get("reason")) for e in audit if e["target"] == email]
    assert mine == [("user.restore", None), ("user.ban", "fraud"), ("user.suspend", "spam")]
    assert all(e["actor"].startswith("cli:") for e in audit if e["target"] == email)
