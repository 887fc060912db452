"""Real processes for the scale-out tests (``tests/test_scale_out.py``): ``lamplighter serve``
replicas, ``lamplighter sim-backend`` servers and a redis-server of the test's own, each on a
free port with its output in a log file, waited for by polling with a deadline, and all stopped
when the :class:`Processes` that started them closes, whatever happened in between.

Also a fresh PostgreSQL database per module (migrated once before any replica starts, as the
deploy's ``migrate`` job does) and accounts made in it directly, as ``lamplighter users create``
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import asyncpg
import httpx
import openai
import redis
from prometheus_client.parser import text_string_to_metric_families

from lamplighter.accounts import AccountService
from lamplighter.settings import async_database_url
from lamplighter.simulation.server import SimBackend, SimSettings
from lamplighter.store import migrate
from lamplighter.store.database import Database
from tests.conftest import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "LAMPLIGHTER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_SERVER = "/usr/bin/redis-server"


def wait_for(check: Callable[[], T | None], seconds: float, what: str, every: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None or False; fail after
    ``seconds``, saying ``what`` never happened."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting until {what}")
        time.sleep(every)


async def wait_for_async(
    check: Callable[[], T | None], seconds: float, what: str, every: float = 0.05
) -> T:
    """:func:`wait_for` for a coroutine: ``check`` (blocking) runs in a thread."""
    deadline = time.monotonic() + seconds
    while True:
        value = await asyncio.to_thread(check)
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting until {what}")
        await asyncio.sleep(every)


async def until(
    check: Callable[[], Awaitable[bool]], seconds: float, what: str, every: float = 0.05
) -> None:
    """Await ``check()`` until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting until {what}")
        await asyncio.sleep(every)


class Process:
    """One child process on its own port, with its output in ``logs/<name>.log``. It may be
    killed and started again (on the same port)."""

    def __init__(self, name: str, logs: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        with self.log.open("ab") as log:
            # A session of its own: a Ctrl-C meant for pytest does not reach it first.
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean anything up, as when a machine dies."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM, without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ten seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait(timeout=10)

    def tail(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


class Sim(Process):
    """``lamplighter sim-backend``: a simulated vLLM server."""

    def __init__(self, name: str, logs: Path, model: str, *, time_scale: float = 1.0) -> None:
        super().__init__(name, logs)
        self.model = model
        self.time_scale = time_scale

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "lamplighter", "sim-backend", "--port", str(self.port)),
            *("--model", self.model, "--time-scale", str(self.time_scale)),
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_up(self, seconds: float = 60.0) -> None:
        def up() -> bool:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            return False

        wait_for(up, seconds, f"sim-backend {self.name} answers")

    def metric(self, name: str) -> float:
        """A vLLM metric of this server, summed over its labels."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(
                httpx.get(self.url + "/metrics", timeout=5).text
            )
            for sample in family.samples
            if sample.name == name
        )


class RedisServer(Process):
    """A redis-server of the test's own that keeps nothing on disk: killed and started again
    on the same port, it comes back empty, as after a crash."""

    def command(self) -> list[str]:
        return [
            *(REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False

    def wait_up(self, seconds: float = 10.0) -> None:
        def up() -> bool:
            self.check_alive()
            return self.answers()

        wait_for(up, seconds, f"redis-server {self.name} answers")


class Gateway(Process):
    """``lamplighter serve``, configured the documented way: LAMPLIGHTER_* variables and the
    TOML file LAMPLIGHTER_CONFIG names. Nothing of the test's own environment leaks in."""

    def __init__(self, name: str, logs: Path, **settings: object) -> None:
        super().__init__(name, logs)
        self.settings = {"port": self.port, "data_dir": logs / name, **settings}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lamplighter", "serve"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
        env.update({f"LAMPLIGHTER_{k.upper()}": str(v) for k, v in self.settings.items()})
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        self.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
        return False

    def wait_ready(self, seconds: float = 90.0) -> None:
        wait_for(self.ready, seconds, f"replica {self.name} is ready (/readyz)", every=0.1)

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of ``/metrics`` (a counter by its ``_total`` name), or None if absent."""
        text = httpx.get(self.base_url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def client(self, key: str, timeout: float = 60.0) -> openai.AsyncOpenAI:
        """The official SDK pointed at this replica, retrying nothing (the tests count)."""
        return openai.AsyncOpenAI(
            base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=timeout
        )


P = TypeVar("P", bound=Process)


class Processes:
    """Owns processes and stops every one of them on exit: all are asked to stop at once, then
    each is waited for (and killed if it does not stop)."""

    def __init__(self) -> None:
        self.owned: list[Process] = []

    def add(self, process: P) -> P:
        self.owned.append(process)
        return process

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for process in reversed(self.owned):
            with contextlib.suppress(Exception):
                process.terminate()
        for process in reversed(self.owned):
            with contextlib.suppress(Exception):
                process.stop()


# -- PostgreSQL ------------------------------------------------------------------------------


def postgres_answers() -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated database on the test server (its plain ``postgresql://`` URL, as an
    operator writes it), dropped afterwards."""
    name = f"lamplighter_scale_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
        migrate.upgrade(async_database_url(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def new_users(database_url: str, *plans: str) -> list[str]:
    """One new user per plan, each with an API key; returns the keys."""

    async def make() -> list[str]:
        db = Database(async_database_url(database_url))
        try:
            accounts = AccountService(db)
            keys = []
            for plan in plans:
                email = f"{plan}-{uuid.uuid4().hex[:10]}@example.org"
                await accounts.create_user(email, plan=plan)
                keys.append((await accounts.create_key(email, "scale-out test")).secret)
            return keys
        finally:
            await db.close()

    return asyncio.run(make())


def count_admins(database_url: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM users WHERE is_admin"))
        finally:
            await conn.close()

    return asyncio.run(count())


# -- sim-backend answers ------------------------------------------------------------------------


def long_answer_seed(content: str, tokens: int, *, start: int = 0) -> int:
    """A request ``seed`` for which a sim-backend (its own ``--seed`` left at 0) answers the one
    user message ``content`` with all of ``max_tokens=tokens``: the simulator draws each
    answer's length from the seed and the prompt, so asking one here tells what the server will
    do. Long answers keep a stream (and its slot) busy until the test lets go of it."""
    for seed in range(start, start + 10_000):
        sim = SimBackend(SimSettings())
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": tokens}
        if sim.submit({**body, "seed": seed}).request.output_tokens >= tokens:
            return seed
    raise AssertionError(f"no seed gives {tokens} tokens for {content!r}")
