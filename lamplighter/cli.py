"""The ``lamplighter`` command. Commands parse arguments, build settings and call services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar

import typer

from lamplighter.exceptions import APIError, ConfigError
from lamplighter.settings import Settings, async_database_url, load_settings

if TYPE_CHECKING:
    # The store, its migrations and the services import SQLAlchemy, Alembic and the rest of the
    # gateway (0.9 s); each command imports what it uses, so `sim-backend`, `top` and `bench`
    # start without them.
    from lamplighter.accounts import AccountService
    from lamplighter.store.audit import Audit
    from lamplighter.store.database import Database
    from lamplighter.traffic.planbook import PlanBook

T = TypeVar("T")


def _group(help: str) -> typer.Typer:
    # Markdown: a docstring's paragraph is one paragraph in the command list, not the source's
    # line breaks.
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode="markdown")


app = _group("Lamplighter: a self-hosted ChatGPT-style service.")
users = _group("Manage user accounts.")
keys = _group("Manage API keys.")
db_app = _group("Manage the database.")
credits_app = _group("Credits earned by feedback.")
app.add_typer(users, name="users")
app.add_typer(keys, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(credits_app, name="credits")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (or LAMPLIGHTER_CONFIG).")
]


def _settings(config: Path | None = None, **overrides: Any) -> Settings:
    try:
        return load_settings(config=config, **overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _upgrade(settings: Settings) -> None:
    """Create the data directory and apply every pending migration."""
    from lamplighter.store import migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)


def _with_db(
    settings: Settings, action: Callable[[Database], Awaitable[T]], *, writes: bool = True
) -> T:
    """Migrate, then run ``action`` with the database; one that ``writes`` is refused while
    `db copy` has frozen the database (what it wrote would not reach the new one)."""
    from lamplighter.readonly import FLAG, applies, read_flag
    from lamplighter.store.database import Database

    flag = read_flag(settings.data_dir)
    frozen = flag is not None and applies(flag, settings.resolved_database_url)
    if frozen and not writes and flag is not None and flag.moved_to:
        typer.secho(
            f"warning: `lamplighter db copy` moved this database to {flag.moved_to}: this reads"
            " the old copy, as it was then. Set LAMPLIGHTER_DATABASE_URL to the new one.",
            fg="yellow",
            err=True,
        )
    if writes and frozen and flag is not None:
        to = f" to {flag.moved_to}" if flag.moved_to else ""
        typer.secho(
            f"error: this database is read-only ({settings.data_dir / FLAG}): `lamplighter db "
            f"copy` moved it{to}. Run the command with LAMPLIGHTER_DATABASE_URL set to the new "
            "database, or delete READ_ONLY to go back to this one.",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    _upgrade(settings)

    async def main() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await action(db)
        finally:
            await db.close()

    return asyncio.run(main())


async def _store_plans(settings: Settings, db: Database) -> PlanBook:
    """The config file's plans, stored where the database lacks them, as `serve` does at start:
    a person can be put on a plan of the file before the server has ever run. The settings that
    name a plan must name one of them."""
    from lamplighter.settings import read_config
    from lamplighter.traffic.planbook import PlanBook
    from lamplighter.traffic.plans import plans_from_config

    plans = PlanBook(db)
    await plans.load(plans_from_config(read_config(settings.config).get("plans", {})))
    plans.check_setting("signup_plan", settings.signup_plan)
    plans.check_setting("billing_free_plan", settings.billing_free_plan)
    return plans


def _run(
    settings: Settings,
    action: Callable[[AccountService], Awaitable[T]],
    *,
    with_plans: bool = False,
    writes: bool = True,
) -> T:
    """Migrate (and with ``with_plans`` store the config's plans), then run ``action`` against
    the account service; API errors become exit 1, config errors exit 2."""
    from lamplighter.accounts import AccountService

    async def run(db: Database) -> T:
        if with_plans:
            await _store_plans(settings, db)
        return await action(AccountService(db))

    return _guarded(settings, run, writes=writes)


def _guarded(
    settings: Settings, action: Callable[[Database], Awaitable[T]], *, writes: bool = True
) -> T:
    """``_with_db``, with API errors as exit 1 and config errors as exit 2."""
    with _told():
        return _with_db(settings, action, writes=writes)


@contextlib.contextmanager
def _told() -> Iterator[None]:
    """An API error (the database refused) as one ``error:`` line and exit 1, a mistake in
    the configuration as one line and exit 2."""
    try:
        yield
    except APIError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from exc
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (LAMPLIGHTER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (LAMPLIGHTER_PORT).")] = None,
) -> None:
    """Start the HTTP server (migrates the database and loads the model first)."""
    import uvicorn

    from lamplighter.allocator import limit_arenas
    from lamplighter.app import create_app, lay_groundwork
    from lamplighter.drain import CUT_WAIT_S, GracefulServer
    from lamplighter.logs import configure_logging

    limit_arenas()  # before the database pool's threads exist
    settings = _settings(config, host=host, port=port)
    # One event loop for the groundwork and the server, so that the app takes the database and
    # plans the groundwork opened instead of migrating and loading them again.
    with asyncio.Runner(loop_factory=_event_loop()) as runner:
        # A mistake in the file's tables, or a setting naming a plan that is not there, is told
        # here in a line before anything listens (in the app's own start it would be a
        # traceback in the logs). A store that `db copy` froze still starts, read-only: the
        # server refuses writes itself.
        with _told():
            groundwork = runner.run(lay_groundwork(settings))
        configure_logging(settings.log_level)
        logging.getLogger("lamplighter").info(
            "starting", extra={"url": f"http://{settings.host}:{settings.port}"}
        )
        app = create_app(settings, groundwork=groundwork)
        server = GracefulServer(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,  # RequestIds writes a structured access line instead
                # The drain (drain.py) has already waited for the requests: only a backstop.
                timeout_graceful_shutdown=int(CUT_WAIT_S),
                limit_concurrency=_connection_limit(),
                timeout_keep_alive=KEEP_ALIVE_S,
            ),
            app.state.drain,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, re-raised once the server is down
            runner.run(server.serve())
    if not server.started:
        raise typer.Exit(3)  # uvicorn's status for a failed start


# An idle keep-alive connection is closed after this many seconds (uvicorn's default, kept
# short: idle sockets are what a flood of connections holds). deploy/nginx.conf lets its pooled
# connections to the gateways idle for less, so it never reuses one as the gateway closes it.
KEEP_ALIVE_S = 5
# Open files kept back from connections for the database, the backends, Redis and the model.
FILE_HEADROOM = 256


def _connection_limit() -> int | None:
    """How many connections and requests the server holds before it answers new requests 503
    at once: the process's open-file limit less FILE_HEADROOM (or half of it), so a flood of
    connections is refused instead of leaving the server without a socket for /healthz, its
    database or its backends; the traffic layer's own admission (queues, 429 and 503 with
    Retry-After) acts long before it on any real surge. None when files are unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft // 2, soft - FILE_HEADROOM)


def _event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed, as ``uvicorn.run`` would choose (its choosing differs
    between the uvicorn versions we accept); else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@users.command("create")
def users_create(
    email: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    plan: Annotated[str, typer.Option(help="Plan name.")] = "free",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a user. Without --password-stdin the user has no password (API keys only)."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    user = _run(
        _settings(config),
        lambda accounts: accounts.create_user(email, password=password, admin=admin, plan=plan),
        with_plans=True,
    )
    typer.echo(
        f"created user {user.email} ({user.id}), plan {user.plan}{', admin' if admin else ''}"
    )


@users.command("set")
def users_set(
    email: str,
    admin: Annotated[
        bool | None,
        typer.Option("--admin/--no-admin", help="Make the user an admin, or no longer one."),
    ] = None,
    plan: Annotated[str | None, typer.Option(help="Move the user to this plan.")] = None,
    config: ConfigOption = None,
) -> None:
    """Change an account: make it an admin or no longer one, or move it to another plan (its
    next request is served under it). The only admin cannot be demoted."""
    if admin is None and plan is None:
        typer.secho("error: give --admin, --no-admin or --plan NAME", fg="red", err=True)
        raise typer.Exit(2)
    change = {"admin": admin, "plan": plan}
    audit = _by_cli("user.change", email, {k: v for k, v in change.items() if v is not None})
    user = _run(
        _settings(config),
        lambda accounts: accounts.change_user(email, admin=admin, plan=plan, audit=audit),
        with_plans=plan is not None,
    )
    typer.echo(f"{user.email}: plan {user.plan}{', admin' if user.is_admin else ''}")


ReasonOption = Annotated[
    str, typer.Option(help="Why, for the audit log and the person (shown when refused).")
]


@users.command("suspend")
def users_suspend(
    email: str,
    reason: ReasonOption,
    days: Annotated[
        int | None,
        typer.Option(min=1, max=3650, help="For this many days (default: until restored)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Lock an account out, its API keys and browser sessions alike, for some days or until
    `users restore`; its sessions end at once."""
    until = datetime.now(UTC) + timedelta(days=days) if days else None
    audit = _by_cli("user.suspend", email, {"reason": reason, "days": days})
    user = _run(
        _settings(config),
        lambda accounts: accounts.suspend(email, _reason(reason), until=until, audit=audit),
    )
    typer.echo(
        f"suspended {user.email} "
        + (f"until {until:%Y-%m-%d %H:%M} UTC" if until else "until restored")
    )


@users.command("ban")
def users_ban(email: str, reason: ReasonOption, config: ConfigOption = None) -> None:
    """Ban an account for good (until `users restore`): its keys stop working, its sessions
    end, and the admin pages list it as banned."""
    audit = _by_cli("user.ban", email, {"reason": reason})
    user = _run(
        _settings(config),
        lambda accounts: accounts.suspend(
            email, _reason(reason), until=None, banned=True, audit=audit
        ),
    )
    typer.echo(f"banned {user.email}")


@users.command("restore")
def users_restore(email: str, config: ConfigOption = None) -> None:
    """Let an account back in: end its suspension or ban and, with Redis configured, the
    temporary ban the abuse scores gave it on every running replica (without Redis, a running
    server's temporary bans are lifted from the admin page)."""
    settings = _settings(config)
    user = _run(
        settings,
        lambda accounts: accounts.restore(email, audit=_by_cli("user.restore", email)),
    )
    if settings.redis_url:
        from lamplighter.api.guard import lift_elsewhere
        from lamplighter.traffic.bulletin import Bulletin

        async def lift() -> bool:
            bulletin = Bulletin(settings.redis_url)
            try:
                return await lift_elsewhere(bulletin, f"user:{user.id}")
            finally:
                await bulletin.stop()

        if not asyncio.run(lift()):
            typer.secho(
                "warning: Redis could not be reached: a temporary ban on a running server lasts"
                " until it ends, or until it is lifted from the admin page",
                fg="yellow",
                err=True,
            )
    typer.echo(f"restored {user.email}")


def _reason(reason: str) -> str:
    if not reason.strip() or len(reason) > 500:
        typer.secho("error: give a --reason of 1 to 500 characters", fg="red", err=True)
        raise typer.Exit(2)
    return reason.strip()


def _by_cli(action: str, target: str, details: dict[str, Any] | None = None) -> Audit:
    """The audit entry of an action taken with this command."""
    from lamplighter.store.audit import Audit

    return Audit.by_operator(action, target, details)


@users.command("invite")
def users_invite(
    email: str,
    plan: Annotated[
        str | None, typer.Option(help="Plan name (a new account's default: free).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create an account and print a one-time link (valid 7 days) on which its owner chooses a
    password for the web chat. Inviting again someone who has not chosen one yet prints a new
    link; the earlier one stops working."""
    from lamplighter.web.auth import INVITE_DAYS, WebAuth

    settings = _settings(config)
    token = _run(
        settings,
        lambda accounts: WebAuth(accounts.db, accounts, settings.session_days).invite(email, plan),
        with_plans=True,
    )
    typer.echo(f"invited {email}; send them this link (valid {INVITE_DAYS} days, works once):")
    _link(settings, f"/invite/{token}")


@users.command("reset-password")
def users_reset_password(email: str, config: ConfigOption = None) -> None:
    """Print a one-time link (valid 7 days) on which the account's owner chooses a new password
    for the web chat. The old password works until then; setting the new one ends the account's
    other web sessions. API keys are not affected."""
    from lamplighter.web.auth import INVITE_DAYS, WebAuth

    settings = _settings(config)
    token = _run(
        settings,
        lambda accounts: WebAuth(accounts.db, accounts, settings.session_days).password_link(email),
    )
    typer.echo(f"send {email} this link to choose a new password (valid {INVITE_DAYS} days):")
    _link(settings, f"/invite/{token}")


def _link(settings: Settings, path: str) -> None:
    """A link for a person's browser, on the server's public address. Without one
    (LAMPLIGHTER_PUBLIC_URL), it is built on this command's own host and port, which only
    match the server's by chance: say so, and how to give the right one."""
    typer.echo(f"  {settings.base_url}{path}")
    if not settings.public_url:
        typer.echo(
            f"note: LAMPLIGHTER_PUBLIC_URL is not set, so this link assumes people reach the "
            f"server at {settings.base_url}. If they reach it at another address, put that "
            "address in its place, or set LAMPLIGHTER_PUBLIC_URL to it (as the server has it, "
            "e.g. https://chat.example.org) and run the command again.",
            err=True,
        )


@users.command("delete")
def users_delete(
    email: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete an account and all its data (conversations, ratings, keys, usage). The only
    admin cannot be deleted."""
    if not yes:
        typer.confirm(f"Delete {email} and all their data for good?", abort=True)
    audit = _by_cli("user.delete", email)
    _run(_settings(config), lambda accounts: accounts.delete_user(email, audit=audit))
    typer.echo(f"deleted {email}")


@users.command("list")
def users_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOption = None,
) -> None:
    """List users, oldest first, with their status (active, suspended or banned)."""
    found = _run(_settings(config), lambda accounts: accounts.list_users(), writes=False)
    now = datetime.now(UTC)
    for user in found:
        status = user.status(now)
        until = user.disabled_until if status == "suspended" else None
        row = {
            "id": str(user.id),
            "email": user.email,
            "plan": user.plan,
            "admin": user.is_admin,
            "status": status,
            "until": until.isoformat() if until else None,
            "created_at": user.created_at.isoformat(),
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            flags = [" admin"] if user.is_admin else []
            if status != "active":
                flags.append(f" {status}" + (f" until {until:%Y-%m-%d %H:%M} UTC" if until else ""))
            typer.echo(f"{row['id']}  {user.email:<32} {user.plan:<8}{''.join(flags)}")


@keys.command("create")
def keys_create(
    email: str,
    name: Annotated[str, typer.Option(help="A label to tell keys apart.")] = "",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help="What the key may do: chat, feedback, admin (repeat the option). Default: "
            "chat and feedback, and admin for an admin."
        ),
    ] = None,
    expires_days: Annotated[
        int | None, typer.Option(min=1, help="Days until the key stops working.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create an API key for a user and print it. It is shown only this once."""
    from lamplighter.accounts import key_name

    try:
        name = key_name(name)
    except APIError as exc:
        typer.secho(f"error: --name: {exc.message}", fg="red", err=True)
        raise typer.Exit(2) from exc
    expires = timedelta(days=expires_days) if expires_days else None
    created = _run(
        _settings(config),
        lambda accounts: accounts.create_key(email, name, scopes=scope, expires_in=expires),
    )
    typer.echo(f"API key {created.id} for {created.user_email} (shown only now):", err=True)
    typer.echo(created.secret)


@keys.command("list")
def keys_list(email: str, config: ConfigOption = None) -> None:
    """A user's keys: id, prefix, name, scopes, and whether they are live."""
    found = _run(_settings(config), lambda accounts: accounts.keys_of(email), writes=False)
    now = datetime.now(UTC)
    for key in found:
        if key.revoked_at is not None:
            state = f"revoked {key.revoked_at:%Y-%m-%d}"
        elif key.expires_at is not None and key.expires_at <= now:
            state = f"expired {key.expires_at:%Y-%m-%d}"
        elif key.expires_at is not None:
            state = f"live until {key.expires_at:%Y-%m-%d %H:%M}"
        else:
            state = "live"
        scopes = ",".join(key.scopes)
        typer.echo(f"{key.id}  {key.prefix}…  {key.name or '-':<16} {scopes:<20} {state}")


@keys.command("rotate")
def keys_rotate(
    key_id: str,
    grace_hours: Annotated[
        float, typer.Option(min=0, help="Hours the old key keeps working.")
    ] = 24.0,
    config: ConfigOption = None,
) -> None:
    """Replace a key: print a new one with the same name, scopes and lifetime; the old one
    keeps working for the grace period, then expires."""
    parsed = _key_id(key_id)
    created = _run(
        _settings(config),
        lambda accounts: accounts.rotate_key(parsed, timedelta(hours=grace_hours)),
    )
    typer.echo(
        f"API key {created.id} replaces {parsed}, which stops working in {grace_hours:g} h "
        "(shown only now):",
        err=True,
    )
    typer.echo(created.secret)


def _key_id(key_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(key_id)
    except ValueError as exc:
        typer.secho(f"error: {key_id!r} is not a key id", fg="red", err=True)
        raise typer.Exit(2) from exc


@keys.command("revoke")
def keys_revoke(key_id: str, config: ConfigOption = None) -> None:
    """Revoke an API key by its id; it stops working at once."""
    parsed = _key_id(key_id)
    audit = _by_cli("key.revoke", str(parsed))
    _run(_settings(config), lambda accounts: accounts.revoke_key(parsed, audit=audit))
    typer.echo(f"revoked {parsed}")


@app.command()
def export(
    kind: Annotated[str, typer.Argument(help="sft, kto, dpo, conversations or votes.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the dataset to.")],
    format_: Annotated[
        str, typer.Option("--format", help="jsonl (JSON lines) or parquet.")
    ] = "jsonl",
    since: Annotated[
        datetime | None,
        typer.Option(help="Only answers after this time (ISO 8601), plus what was deleted."),
    ] = None,
    min_trust: Annotated[
        float | None,
        typer.Option(
            "--min-trust",
            help="Leave out people whose rater trust (0 to 1) is below this.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Export training data in Hugging Face TRL's formats (votes: Chatbot Arena's), with a
    dataset card."""
    from tqdm import tqdm

    from lamplighter.flywheel.export import FORMATS, KINDS, Exporter, count_messages

    def refuse(message: str) -> None:
        typer.secho(f"error: {message}", fg="red", err=True)
        raise typer.Exit(2)

    if kind not in KINDS:
        refuse(f"unknown export {kind!r}; use {', '.join(KINDS)}")
    if format_ not in FORMATS:
        refuse(f"unknown --format {format_!r}; use {' or '.join(FORMATS)}")
    if min_trust is not None and not 0 <= min_trust <= 1:
        refuse(f"--min-trust is a trust from 0 to 1, not {min_trust:g}")
    if out.exists() and not out.is_dir():
        refuse(f"--out {out} is a file, not a directory")
    out = out.resolve()  # recorded with the run, for the console
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    settings = _settings(config)

    async def main(db: Database) -> Any:
        total = await count_messages(db)
        with tqdm(total=total, unit="msg", desc=f"export {kind}", file=sys.stderr) as bar:
            exporter = Exporter(db, settings.training_consent_default)
            return await exporter.run(
                kind,
                out,
                since=since,
                format=format_,
                min_trust=min_trust,
                progress=bar.update,
            )

    # It writes its run's record (the console lists the last exports): refused on a frozen
    # store like any command that writes, rather than exporting a moved store's stale copy.
    report = _with_db(settings, main)
    removed = sum(report.removed.values())
    typer.echo(
        f"wrote {report.rows} rows to {out / report.filename} ({removed} left out; see README.md)"
    )


@app.command("leaderboard")
def leaderboard_command(
    rounds: Annotated[int, typer.Option(help="Bootstrap rounds for the intervals.")] = 1000,
    since: Annotated[
        datetime | None, typer.Option(help="Only votes after this time (ISO 8601).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Models ranked by side-by-side votes (Bradley-Terry, bootstrap 95% intervals)."""
    from rich.console import Console
    from rich.table import Table

    from lamplighter.flywheel.board import standings

    if rounds < 10:
        typer.secho("error: --rounds must be at least 10", fg="red", err=True)
        raise typer.Exit(2)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    board = _with_db(
        _settings(config), lambda db: standings(db, rounds=rounds, since=since), writes=False
    )
    if as_json:
        typer.echo(json.dumps(board, indent=2))
        return
    table = Table(title=f"{board['counted']} votes from {board['voters']} voters")
    for column in ("rank", "model", "score", "95% interval", "votes", "won", "lost", "tied"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in board["models"]:
        table.add_row(
            str(row["rank"]), row["model"], f"{row['score']:.0f}",
            f"{row['lower']:.0f} to {row['upper']:.0f}", str(row["votes"]), str(row["wins"]),
            str(row["losses"]), str(row["ties"]),
        )  # fmt: skip
    Console().print(table)
    flagged = board["suspicious_voters"]
    if flagged:
        voters = "voter" if len(flagged) == 1 else "voters"
        typer.echo(f"{len(flagged)} {voters} left out: their votes disagree with everyone's.")


@credits_app.command("review")
def credits_review(config: ConfigOption = None) -> None:
    """Estimate rater trust now and claw back credits that should not stand."""
    from lamplighter.flywheel.credits import Credits
    from lamplighter.flywheel.policy import FlywheelPolicy
    from lamplighter.settings import read_config

    settings = _settings(config)

    async def review(db: Database) -> Any:
        policy = FlywheelPolicy.from_config(read_config(settings.config).get("flywheel", {}))
        return await Credits(db, policy.credits).review()

    report = _guarded(settings, review)
    clawed = ", ".join(f"{n} for {reason}" for reason, n in report.clawed_back.items())
    typer.echo(
        f"{report.raters} raters, {report.checked} with enough evidence to judge, "
        f"{len(report.untrusted)} below the trust threshold, {report.groups} sock-puppet groups; "
        f"credits clawed back: {clawed or 'none'}"
    )


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply every pending migration."""
    _upgrade(_settings(config))
    typer.echo("database is at the latest revision")


@db_app.command("copy")
def db_copy(
    to: Annotated[str, typer.Option("--to", help="The PostgreSQL database to move to.")],
    batch: Annotated[int, typer.Option(min=1, help="Rows per read and write.")] = 1000,
    resume: Annotated[
        bool, typer.Option("--resume", help="Reconcile a target left by an interrupted copy.")
    ] = False,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="No server uses the store: skip the read-only handshake."),
    ] = False,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to let running requests finish once read-only.")
    ] = 60.0,
    full_verify: Annotated[
        bool,
        typer.Option(
            "--full-verify",
            help="Checksum every table again inside the read-only window (longer window).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Move the store to PostgreSQL while the server keeps serving, then verify it table by
    table. Writes are refused for a few seconds at the end; restart on the new URL after."""
    from lamplighter.store.copy import CopyFailed, CopyOptions, CopyRefused, copy_store

    settings = _settings(config)
    if not async_database_url(to).startswith("postgresql+asyncpg://"):
        typer.secho(
            "error: --to: use postgresql://user[:password]@host[:port]/db", fg="red", err=True
        )
        raise typer.Exit(2)
    options = CopyOptions(
        batch=batch,
        resume=resume,
        offline=offline,
        drain_timeout=drain_timeout,
        full_verify=full_verify,
    )
    say = (lambda _: None) if as_json else (lambda line: typer.echo(line, err=True))
    try:
        report = _stoppable(
            copy_store(settings.resolved_database_url, to, settings.data_dir, options, say)
        )
    except _Stopped as exc:
        from lamplighter.readonly import moved

        done = moved(settings.data_dir, settings.resolved_database_url)
        if done is not None:  # the signal came as the verified copy was tidying up
            after = f"the store had moved to {done.moved_to}: restart the server on it"
        else:
            after = "the server is writable again (pass --resume to go on with this target)"
        typer.secho(f"error: stopped by {exc.signal.name}; {after}", fg="red", err=True)
        raise typer.Exit(128 + exc.signal) from exc
    except CopyRefused as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except CopyFailed as exc:
        typer.secho(f"error: {exc} (the server is writable again)", fg="red", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_copy_report(report)
    if not report.ok:
        raise typer.Exit(1)


class _Stopped(Exception):
    """The work was cancelled because the process was sent ``signal``."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum.name)
        self.signal = signum


def _stoppable(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)``, where SIGTERM and SIGHUP end it as Ctrl-C does: the work is
    cancelled, so its ``finally`` blocks run (``db copy`` drops its triggers and lifts read-only
    mode), then :class:`_Stopped` is raised. SIGTERM is what timeout, systemd, ``docker stop``
    and a Kubernetes Job's deadline send, and SIGHUP what a closed terminal sends; by default
    either ends the process on the spot, cleaning nothing up. Once stopping, a repeated signal
    is ignored so that it cannot cut the cleanup short (SIGKILL still can)."""
    received: list[signal.Signals] = []

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # asyncio.run runs main() as a task

        def stop(signum: signal.Signals) -> None:
            if not received:
                received.append(signum)
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop, signum)
        return await work  # the loop's closing removes the handlers

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if not received:
            raise
        raise _Stopped(received[0]) from None


def _print_copy_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    typer.echo(f"from {report.source}\nto   {report.target} (migration {report.revision})")
    table = Table()
    for column in ("table", "rows", "in target", "sha256", "rechecked", "result"):
        table.add_column(
            column, justify="left" if column in ("table", "sha256") else "right", no_wrap=True
        )
    for row in report.tables:
        same = row.source_sha256 == row.target_sha256
        digest = (
            row.source_sha256[:12] if same else f"{row.source_sha256[:5]}≠{row.target_sha256[:5]}"
        )
        table.add_row(
            row.table, str(row.source_rows), str(row.target_rows), digest, str(row.rechecked),
            "ok" if row.ok else "MISMATCH",
        )  # fmt: skip
    Console().print(table)
    passes = ", ".join(str(n) for n in report.passes)
    typer.echo(
        f"copied {report.copied_rows} rows in {report.copy_seconds:.1f} s "
        f"({report.rows_per_second:,.0f} rows/s); catch-up passes: {passes} rows"
    )
    if report.full_verify:
        typer.echo("checksums were taken while read-only")
    else:
        typer.echo(
            "checksums were taken live, from one snapshot of each side; the rows changed after "
            "them were compared one by one (rechecked) while read-only"
        )
    typer.echo(f"read-only for {report.read_only_seconds:.2f} s")
    if report.ok:
        typer.echo(
            "verified. The old store refuses writes from now on: restart the server with\n"
            f"  LAMPLIGHTER_DATABASE_URL={report.target}\n"
            "(the URL you passed to --to). To roll back instead, delete READ_ONLY in the data "
            "directory."
        )
    else:
        typer.secho(
            "verification FAILED: the server is writable again on the old database", fg="red"
        )


# --- Simulation: sim-backend and bench surge (lamplighter/simulation) -------------------------
@app.command()
def top(
    url: Annotated[
        str | None, typer.Option(help="The instance to watch (default: this machine's).")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="An admin's API key (or LAMPLIGHTER_ADMIN_KEY).", show_default=False),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between redraws.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one screen and exit.")] = False,
    config: ConfigOption = None,
) -> None:
    """Live figures of a running instance in the terminal, like htop."""
    import os
    import time

    import httpx
    from rich.console import Console
    from rich.live import Live

    from lamplighter.telemetry.top import StatsClient, render

    url = url or _settings(config).local_url
    key = key or os.environ.get("LAMPLIGHTER_ADMIN_KEY")
    if not key:
        typer.secho("error: pass --key or set LAMPLIGHTER_ADMIN_KEY", fg="red", err=True)
        raise typer.Exit(2)
    client = StatsClient(url, key)
    console = Console()
    try:
        stats = client.poll()
        if once:
            console.print(render(stats, client.points, url))
            return
        with Live(render(stats, client.points, url), console=console, screen=True) as live:
            while True:
                time.sleep(interval)
                live.update(render(client.poll(), client.points, url))
    except KeyboardInterrupt:
        pass
    except (PermissionError, httpx.HTTPError) as exc:
        typer.secho(f"error: {url}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()


# Commands parse arguments and call lamplighter.simulation; imports stay inside them so that the
# other commands start without loading the simulator.

bench = _group("Benchmarks.")
app.add_typer(bench, name="bench")

GpuOption = Annotated[str, typer.Option("--gpu", help="Timing profile: h100 or a100.")]


@app.command("sim-backend")
def sim_backend(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed for answer lengths and words.")] = 0,
    model: Annotated[str, typer.Option(help="Model name to serve.")] = "sim-llama-3-8b-instruct",
    gpu: GpuOption = "h100",
    kv_cache_tokens: Annotated[
        int | None, typer.Option(help="KV cache size in tokens (default: the profile's).")
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(help="Most sequences in a batch (vLLM's --max-num-seqs).")
    ] = None,
    max_batched_tokens: Annotated[
        int | None, typer.Option(help="Token budget of a step (--max-num-batched-tokens).")
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Longest prompt plus completion.")
    ] = None,
    scheduling_policy: Annotated[
        str, typer.Option(help="fcfs, or priority (requests carry a 'priority' field).")
    ] = "fcfs",
    time_scale: Annotated[
        float, typer.Option(help="Wall seconds per simulated second (0.1: ten times faster).")
    ] = 1.0,
) -> None:
    """Serve a simulated vLLM GPU backend (OpenAI-compatible API, vLLM metrics)."""
    from lamplighter.simulation.gpu import profile
    from lamplighter.simulation.server import SimSettings, serve

    if scheduling_policy not in ("fcfs", "priority"):
        raise typer.BadParameter("fcfs or priority", param_hint="--scheduling-policy")
    try:
        timing = profile(
            gpu,
            kv_cache_tokens=kv_cache_tokens,
            max_num_seqs=max_num_seqs,
            max_batched_tokens=max_batched_tokens,
            max_model_len=max_model_len,
        )
        settings = SimSettings(
            model=model,
            timing=timing,
            seed=seed,
            scheduling_policy="priority" if scheduling_policy == "priority" else "fcfs",
            time_scale=time_scale,
        )
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"sim-backend ({timing.name}) on http://{host}:{port}", err=True)
    serve(settings, host=host, port=port)


@bench.command("surge")
def bench_surge(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    trace: Annotated[
        Path | None, typer.Option(help="Trace CSV (default: the bundled Azure 2023 trace).")
    ] = None,
    overload: Annotated[float, typer.Option(help="Offered load over capacity.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed for users, plans and patience.")] = 0,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Run overloads 0.5, 1, 2, 3, 5 and 10.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write the sweep as a PNG here (implies --sweep).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Replay only the first N requests of the trace.")
    ] = None,
    gpu: GpuOption = "h100",
) -> None:
    """Replay a real trace at X times capacity through fifo and lamplighter, in virtual time."""
    from lamplighter.simulation import surge
    from lamplighter.simulation.gpu import profile
    from lamplighter.simulation.trace import load

    if plot is not None:
        from lamplighter.simulation.plot import check

        try:
            check()
        except RuntimeError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc

    def progress(run: dict[str, Any]) -> None:
        if sweep or plot is not None:
            typer.echo(f"overload {run['overload']:g}x done", err=True)

    try:
        result = surge.bench(
            load(trace, limit=limit),
            overload=overload,
            seed=seed,
            sweep=sweep or plot is not None,
            model=profile(gpu),
            progress=progress,
        )
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if plot is not None:
        from lamplighter.simulation.plot import plot_sweep

        plot_sweep(result["sweep"], plot)
        typer.echo(f"plot written to {plot}", err=True)
    typer.echo(json.dumps(result) if as_json else surge.render(result))


@bench.command("overhead")
def bench_overhead(
    concurrency: Annotated[str, typer.Option(help="Concurrent requests, comma-separated.")] = (
        "1,8,64"
    ),
    duration: Annotated[float, typer.Option(min=0.5, help="Seconds measured per cell.")] = 5.0,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds before each cell.")] = 1.0,
    chunks: Annotated[int, typer.Option(min=1, help="Tokens (streamed chunks) an answer.")] = 32,
    long_chunks: Annotated[
        int, typer.Option(min=2, help="Tokens of the longer streams, for the CPU a chunk costs.")
    ] = 128,
    skip_litellm: Annotated[
        bool, typer.Option("--skip-litellm", help="Compare with the mock only.")
    ] = False,
    redis: Annotated[
        str | None,
        typer.Option(
            help="Also measure a gateway whose traffic state is in this Redis (as with several "
            "replicas); give it a database of its own, e.g. redis://127.0.0.1:6379/15."
        ),
    ] = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            help="Also measure a gateway whose store is this PostgreSQL database instead of "
            "SQLite (as with several replicas); give it a database of its own."
        ),
    ] = None,
    floor: Annotated[
        bool,
        typer.Option(
            "--floor",
            help="Also measure the floor: the least a proxy on the gateway's stack adds, bare "
            "and with one durable commit a request.",
        ),
    ] = False,
    soak: Annotated[
        float, typer.Option(min=0, help="Run a soak of this many seconds instead.")
    ] = 0.0,
    soak_streams: Annotated[int, typer.Option(min=1, help="Streams held open.")] = 500,
    soak_chunk_ms: Annotated[float, typer.Option(min=0, help="Pause before a chunk.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What the gateway adds in front of a fast mock upstream, beside LiteLLM; or a soak."""
    from lamplighter.overhead.run import Options, bench, parse_concurrency, render

    try:
        levels = parse_concurrency(concurrency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--concurrency") from exc
    if long_chunks <= chunks:
        raise typer.BadParameter("must be more than --chunks", param_hint="--long-chunks")
    options = Options(
        concurrency=levels,
        duration=duration,
        warmup=warmup,
        chunks=chunks,
        long_chunks=long_chunks,
        skip_litellm=skip_litellm,
        redis=redis,
        postgres=postgres,
        floor=floor,
        soak=soak,
        soak_streams=soak_streams,
        soak_chunk_ms=soak_chunk_ms,
    )
    result = bench(options, lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(result) if as_json else render(result))


# --- end of simulation commands ---------------------------------------------------------------


# --- Billing: grants, statements, teams (lamplighter/billing) ---------------------------------

billing_app = _group("Paid plans: grants, statements, period ends.")
teams_app = _group("Teams that share a subscription's seats.")
app.add_typer(billing_app, name="billing")
app.add_typer(teams_app, name="teams")

UserOption = Annotated[str | None, typer.Option("--user", help="The user, by email.")]
TeamOption = Annotated[str | None, typer.Option("--team", help="The team, by name.")]


def _billing(
    settings: Settings, action: Callable[[Any], Awaitable[T]], *, writes: bool = True
) -> T:
    """Migrate, load the plans, then run ``action`` with the billing service (Stripe too when
    configured, to cancel there); API errors become exit 1, config errors exit 2."""
    from lamplighter.billing.service import Billing
    from lamplighter.billing.stripe import StripeClient

    async def run(db: Database) -> T:
        plans = await _store_plans(settings, db)
        key = settings.stripe_secret_key
        billing = Billing(
            db,
            plans,
            free_plan=settings.billing_free_plan,
            grace=timedelta(days=settings.billing_grace_days),
            stripe_client=StripeClient(key, settings.stripe_api_base) if key else None,
        )
        try:
            return await action(billing)
        finally:
            await billing.close()

    return _guarded(settings, run, writes=writes)


def _one_subject(user: str | None, team: str | None) -> None:
    if (user is None) == (team is None):
        typer.secho("error: give --user EMAIL or --team NAME", fg="red", err=True)
        raise typer.Exit(2)


@billing_app.command("grant")
def billing_grant(
    plan: Annotated[str, typer.Option(help="The plan to grant.")],
    user: UserOption = None,
    team: TeamOption = None,
    until: Annotated[
        datetime | None, typer.Option(help="When it ends (ISO 8601, UTC unless it says).")
    ] = None,
    months: Annotated[int | None, typer.Option(min=1, help="Months from now.")] = None,
    days: Annotated[int | None, typer.Option(min=1, help="Days from now.")] = None,
    seats: Annotated[int, typer.Option(min=1, help="Seats, for a team.")] = 1,
    config: ConfigOption = None,
) -> None:
    """Grant a plan to a user or team for a period (the organisation invoices it). It applies
    to their next request; when it ends they go back to their own plans (given by hand)."""
    from lamplighter.billing.subscriptions import add_period

    _one_subject(user, team)
    if sum(x is not None for x in (until, months, days)) != 1:
        typer.secho("error: give one of --until, --months or --days", fg="red", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)
    if until is not None:
        end = until if until.tzinfo else until.replace(tzinfo=UTC)
    elif months is not None:
        end = add_period(now, "month", months)
    else:
        end = now + timedelta(days=days or 0)
    details = {"plan": plan, "until": end.isoformat(), "seats": seats}
    audit = _by_cli("billing.grant", str(user or team), details)
    row = _billing(
        _settings(config),
        lambda billing: billing.grant(
            plan=plan, until=end, email=user, team=team, seats=seats, audit=audit
        ),
    )
    typer.echo(f"granted {row.plan} to {user or team} until {row.period_end:%Y-%m-%d %H:%M} UTC")


@billing_app.command("end")
def billing_end(
    user: UserOption = None, team: TeamOption = None, config: ConfigOption = None
) -> None:
    """End a user's or team's subscription now; they go back to their own plans (given by
    hand, or the free plan)."""
    _one_subject(user, team)
    audit = _by_cli("billing.end", str(user or team))
    _billing(_settings(config), lambda billing: billing.end(email=user, team=team, audit=audit))
    typer.echo(f"ended the subscription of {user or team}")


@billing_app.command("statement")
def billing_statement(
    period: Annotated[str, typer.Option(help="The month, YYYY-MM.")],
    team: TeamOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="CSV file to write (default: standard output).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Usage per user and plan in a month, with the plan's price, as CSV."""
    from lamplighter.billing import statements

    settings = _settings(config)
    try:
        when = statements.period(period)
    except APIError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(2) from exc

    async def write(billing: Any, file: TextIO) -> int:
        team_id = await statements.team_id(billing.db, team)
        count = -1  # the header is no line of usage
        async for values in statements.rows(billing.db, billing.plans, when, team_id):
            file.writelines(statements.csv_lines([values]))
            count += 1
        return count

    try:
        with open(out, "w", newline="") if out else contextlib.nullcontext(sys.stdout) as file:
            lines = _billing(settings, lambda billing: write(billing, file), writes=False)
    except BaseException:
        if out is not None:  # no half-written (or empty) statement left behind
            out.unlink(missing_ok=True)
        raise
    if out is not None:
        typer.echo(f"wrote {lines} lines to {out}", err=True)


@billing_app.command("sweep")
def billing_sweep(config: ConfigOption = None) -> None:
    """Apply the period ends and grace expiries that are due (the server does it every
    minute)."""
    changed = _billing(_settings(config), lambda billing: billing.sweep())
    typer.echo(f"{changed} subscriptions changed")


@teams_app.command("create")
def teams_create(
    name: str,
    owner: Annotated[
        str | None, typer.Option(help="Email of the owner, who may buy its subscription.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a team (its owner joins it first)."""
    audit = _by_cli("team.create", name, {"owner": owner})
    _billing(_settings(config), lambda billing: billing.create_team(name, owner, audit=audit))
    typer.echo(f"created team {name}")


@teams_app.command("add")
def teams_add(name: str, email: str, config: ConfigOption = None) -> None:
    """Add a person to a team; with a subscription, only while a seat is free."""
    audit = _by_cli("team.add", name, {"email": email})
    _billing(_settings(config), lambda billing: billing.add_member(name, email, audit=audit))
    typer.echo(f"added {email} to {name}")


@teams_app.command("remove")
def teams_remove(name: str, email: str, config: ConfigOption = None) -> None:
    """Remove a person from a team; they go back to their own plan at once."""
    audit = _by_cli("team.remove", name, {"email": email})
    _billing(_settings(config), lambda billing: billing.remove_member(name, email, audit=audit))
    typer.echo(f"removed {email} from {name}")


@teams_app.command("show")
def teams_show(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """A team's subscription and members, and who holds a seat."""
    team = _billing(_settings(config), lambda billing: billing.team(name), writes=False)
    if as_json:
        typer.echo(json.dumps(team, indent=2))
        return
    sub = team["subscription"]
    typer.echo(
        f"{team['name']} (owner {team['owner'] or '-'}): "
        + (f"{sub['plan']}, {sub['seats']} seats, {sub['status']}" if sub else "no subscription")
    )
    for member in team["members"]:
        typer.echo(
            f"  {member['email']:<32} {member['plan']:<8} {'seat' if member['seat'] else ''}"
        )


@teams_app.command("list")
def teams_list(config: ConfigOption = None) -> None:
    """Every team and how many members it has."""
    for team in _billing(_settings(config), lambda billing: billing.teams(), writes=False):
        typer.echo(f"{team['name']:<32} {team['members']} members")


# --- end of billing commands ------------------------------------------------------------------


def main() -> None:
    """The command line. An operator's mistake met on the way (a database that cannot be
    reached or refuses, a path that cannot be written) is one ``error:`` line and exit 1, not a
    traceback."""
    try:
        app()
    except Exception as exc:
        problem = _operator_error(exc)
        if problem is None:
            raise
        typer.secho(f"error: {problem}", fg="red", err=True)
        raise SystemExit(1) from None


def _operator_error(exc: Exception) -> str | None:
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return f"cannot connect to the database: {exc}"
    if isinstance(exc, OSError):
        return str(exc)
    if "sqlalchemy" in sys.modules:  # imported by the commands that use a database
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            return f"the database refused: {str(exc.orig).strip() or type(exc.orig).__name__}"
    return None
