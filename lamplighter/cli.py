"""The ``lamplighter`` command. Commands parse arguments, build settings and call services."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lamplighter.accounts import AccountService
from lamplighter.exceptions import APIError, ConfigError
from lamplighter.settings import Settings, load_settings
from lamplighter.store import migrate
from lamplighter.store.database import Database

T = TypeVar("T")

app = typer.Typer(help="Lamplighter: a self-hosted ChatGPT-style service.", no_args_is_help=True)
users = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
keys = typer.Typer(help="Manage API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database.", no_args_is_help=True)
app.add_typer(users, name="users")
app.add_typer(keys, name="keys")
app.add_typer(db_app, name="db")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (or LAMPLIGHTER_CONFIG).")
]


def _settings(config: Path | None = None, **overrides: Any) -> Settings:
    try:
        return load_settings(config=config, **overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _run(settings: Settings, action: Callable[[AccountService], Awaitable[T]]) -> T:
    """Migrate, then run ``action`` against the account service; API errors become exit 1."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)

    async def main() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await action(AccountService(db))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except APIError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (LAMPLIGHTER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (LAMPLIGHTER_PORT).")] = None,
) -> None:
    """Start the HTTP server (migrates the database and loads the model first)."""
    import uvicorn

    from lamplighter.app import create_app
    from lamplighter.logs import configure_logging

    settings = _settings(config, host=host, port=port)
    configure_logging(settings.log_level)
    typer.echo(f"Lamplighter starting on http://{settings.host}:{settings.port}", err=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )


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
    )
    typer.echo(
        f"created user {user.email} ({user.id}), plan {user.plan}{', admin' if admin else ''}"
    )


@users.command("list")
def users_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOption = None,
) -> None:
    """List users, oldest first."""
    found = _run(_settings(config), lambda accounts: accounts.list_users())
    for user in found:
        row = {
            "id": str(user.id),
            "email": user.email,
            "plan": user.plan,
            "admin": user.is_admin,
            "created_at": user.created_at.isoformat(),
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            flag = " admin" if user.is_admin else ""
            typer.echo(f"{row['id']}  {user.email:<32} {user.plan:<8}{flag}")


@keys.command("create")
def keys_create(
    email: str,
    name: Annotated[str, typer.Option(help="A label to tell keys apart.")] = "",
    config: ConfigOption = None,
) -> None:
    """Create an API key for a user and print it. It is shown only this once."""
    created = _run(_settings(config), lambda accounts: accounts.create_key(email, name))
    typer.echo(f"API key {created.id} for {created.user_email} (shown only now):", err=True)
    typer.echo(created.secret)


@keys.command("revoke")
def keys_revoke(key_id: str, config: ConfigOption = None) -> None:
    """Revoke an API key by its id; it stops working at once."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError as exc:
        typer.secho(f"error: {key_id!r} is not a key id", fg="red", err=True)
        raise typer.Exit(2) from exc
    _run(_settings(config), lambda accounts: accounts.revoke_key(parsed))
    typer.echo(f"revoked {parsed}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply every pending migration."""
    settings = _settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    typer.echo("database is at the latest revision")


def main() -> None:
    app()
