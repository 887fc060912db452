"""Shared fixtures: a real server on a free port (loaded once per session), real databases.

PostgreSQL tests use the server at ``LAMPLIGHTER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and create a throwaway database in it. Where no
server answers, they are skipped and the summary says so loudly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import asyncpg
import openai
import pytest
import uvicorn

from lamplighter.app import create_app
from lamplighter.engines.base import Backend
from lamplighter.engines.embedded import EmbeddedBackend, bundled_model_path
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings, load_settings
from lamplighter.store import migrate

T = TypeVar("T")

POSTGRES_URL = os.environ.get(
    "LAMPLIGHTER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MODEL = "smollm2-135m-instruct"
SCRIPTED = "scripted-echo"
FAILING = "scripted-failing"
# Echoes a word every 2 ms: a long answer is still being written when its client leaves.
PACED = "scripted-paced"
_skipped_postgres: list[str] = []
# llama.cpp's threads spin while they wait for each other: under `make test`'s two workers on two
# cores, each worker's model gets one, so the two never fight over a core.
THREADS = 1 if "PYTEST_XDIST_WORKER" in os.environ else 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test instance: nothing read from this machine's environment."""
    return load_settings(
        env={}, data_dir=data_dir, port=free_port(), n_threads=THREADS, **overrides
    )


class ThreadedServer:
    """Any ASGI app under uvicorn on its own thread and event loop, as in production."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        # The server is looked up when the thread starts, so a subclass may replace it.
        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(self.server.serve()), daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start")
            threading.Event().wait(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.loop.close()


class LiveServer(ThreadedServer):
    """Lamplighter itself, with helpers to reach into its services."""

    def __init__(
        self, settings: Settings, backends: Callable[[Settings], Awaitable[list[Backend]]]
    ) -> None:
        self.settings = settings
        self.bootstrap: Any = None
        self.clients: list[openai.OpenAI] = []

        def remember(_: Settings, created: Any) -> None:
            self.bootstrap = created

        super().__init__(
            create_app(settings, backends=backends, on_bootstrap=remember), settings.port
        )

    def call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(services)`` on the server's own loop and return its result."""
        services = self.app.state.services
        return asyncio.run_coroutine_threadsafe(work(services), self.loop).result(timeout=60)

    @contextmanager
    def writer_held(self) -> Iterator[None]:
        """The store's writer busy until the block ends: every write queued meanwhile (a
        question, an answer's first write) waits its turn, as behind a slow commit."""
        held = asyncio.Event()

        async def job(_: Any) -> None:
            await held.wait()

        async def hold(services: Any) -> None:
            services.chat.writer.submit(job)

        async def release(_: Any) -> None:
            held.set()

        self.call(hold)
        try:
            yield
        finally:
            self.call(release)

    def new_user(self, **kwargs: Any) -> tuple[str, str]:
        """A fresh user and an API key for it: (email, key)."""
        email = f"user-{uuid.uuid4().hex[:12]}@example.org"
        self.call(lambda s: s.accounts.create_user(email, **kwargs))
        created = self.call(lambda s: s.accounts.create_key(email, "test"))
        return email, created.secret

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, **kwargs)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        while self.clients:
            self.clients.pop().close()


@pytest.fixture(scope="session")
def scripted() -> ScriptedBackend:
    return ScriptedBackend(SCRIPTED)


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedBackend
) -> Iterator[LiveServer]:
    """One server for the session: the real embedded model (loaded once) and a scripted one."""

    async def backends(_: Settings) -> list[Backend]:
        embedded = EmbeddedBackend(bundled_model_path(), MODEL, n_ctx=2048, n_threads=THREADS)
        await embedded.load()
        paced = ScriptedBackend(PACED, pace_s=0.002)
        return [embedded, scripted, ScriptedBackend(FAILING, fail_after=3), paced]

    data_dir = tmp_path_factory.mktemp("server")
    config = data_dir / "lamplighter.toml"
    config.write_text(ROOMY_PLAN)
    settings = make_settings(data_dir, config=config, stats_interval=1)
    with LiveServer(settings, backends) as live:
        yield live


# Tests about anything but limits run on a plan that never gets in their way.
ROOMY_PLAN = """
[plans.roomy]
priority = 0
requests_per_minute = 100000
tokens_per_minute = 100000000
tokens_per_day = 1000000000
concurrent_streams = 1000
max_tokens = 100000
queue_patience_s = 300
cache_ttl_s = 0

# Under pressure, the "squeezed" plan (made by the traffic tests) gets two-token answers.
[[traffic.degrade]]
plans = ["squeezed"]
when_queued_at_least = 1
max_tokens = 2
"""


@pytest.fixture(autouse=True)
def _close_sdk_clients(request: pytest.FixtureRequest) -> Iterator[None]:
    """SDK clients made during a test are closed after it (their sockets with them)."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").close_clients()


@pytest.fixture
def user(server: LiveServer) -> tuple[str, str]:
    return server.new_user(plan="roomy")


@pytest.fixture
def client(server: LiveServer, user: tuple[str, str]) -> openai.OpenAI:
    return server.client(user[1])


def _postgres_available() -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _skipped_postgres.append(f"{POSTGRES_URL}: {exc}")
        return False
    return True


@contextmanager
def new_postgres_database() -> Iterator[str]:
    """An empty PostgreSQL database of its own (its asyncpg URL), dropped afterwards; the test
    is skipped when PostgreSQL is not reachable."""
    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    name = f"lamplighter_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A freshly created, migrated PostgreSQL database, dropped after the session."""
    with new_postgres_database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'store.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs against SQLite and against PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_postgres:
        terminalreporter.section("SKIPPED: PostgreSQL", sep="!", red=True, bold=True)
        for reason in _skipped_postgres:
            terminalreporter.write_line(
                f"PostgreSQL tests were skipped: no server at {reason}. "
                "Start one or set LAMPLIGHTER_TEST_POSTGRES_URL.",
                red=True,
            )
