"""Real processes for end-to-end tests: ``lamplighter serve`` replicas on PostgreSQL and Redis,
``lamplighter sim-backend`` servers as their GPUs and, where a test kills Redis, a redis-server of
its own; each on a free port with its output in a log file, waited for by polling with a deadline.

Around them: a fresh PostgreSQL database per test (migrated before any replica starts, as the
deploy's ``migrate`` job does) with accounts made in it directly, as ``lamplighter users create``
would; a load balancer that health-checks ``/readyz`` the way nginx, an ingress or a Kubernetes
Service does; and a steady load of ``openai`` SDK clients that records what every request got.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import asyncpg
import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from lamplighter.accounts import AccountService
from lamplighter.settings import async_database_url
from lamplighter.simulation import server as simulation
from lamplighter.store import migrate
from lamplighter.store.database import Database
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import plans_from_config
from tests.conftest import POSTGRES_URL, ThreadedServer, _postgres_available, free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
# A Redis database per pytest-xdist worker (gw0 -> 0, gw1 -> 1): fleets running side by side in
# two workers must not hear each other's bulletins. The overhead benchmark's test keeps to 15.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
REDIS_URL = os.environ.get("LAMPLIGHTER_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_WORKER}")
REDIS_SERVER = "/usr/bin/redis-server"
SIM_MODEL = "sim-llama-3-8b-instruct"
ROOMY = """
[plans.roomy]
priority = 0
requests_per_minute = 100000
tokens_per_minute = 100000000
tokens_per_day = 1000000000
concurrent_streams = 1000
max_tokens = 100000
queue_patience_s = 300
cache_ttl_s = 0
"""


# -- waiting ----------------------------------------------------------------------------------


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


async def until(
    check: Callable[[], Awaitable[T | None]], seconds: float, what: str, every: float = 0.05
) -> T:
    """:func:`wait_for` in a coroutine, awaiting ``check()``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting until {what}")
        await asyncio.sleep(every)


async def wait_for_async(
    check: Callable[[], T | None], seconds: float, what: str, every: float = 0.05
) -> T:
    """:func:`until` for a blocking ``check``, which runs in a thread."""
    return await until(lambda: asyncio.to_thread(check), seconds, what, every)


# -- Redis ------------------------------------------------------------------------------------


def redis_answers(url: str = REDIS_URL) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


# For tests whose replicas share the Redis at REDIS_URL (the default of :class:`Gateway`).
needs_redis = pytest.mark.skipif(not redis_answers(), reason=f"no Redis answers at {REDIS_URL}")


# -- processes --------------------------------------------------------------------------------


class Process:
    """One child process on its own port, with its output in ``<logs>/<name>.log``. It may be
    stopped or killed and started again (on the same port)."""

    def __init__(self, name: str, logs: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """Its environment; None: the test's own."""
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
        """Fail, with the end of its log, unless it runs."""
        if not self.alive:
            how = "never started" if self.process is None else f"exited with {self.process.poll()}"
            raise RuntimeError(f"{self.name} {how}:\n{self.tail()}")

    def terminate(self) -> None:
        """SIGTERM, without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; its exit
        status (None if it never started)."""
        if self.process is None:
            return None
        self.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no chance to clean anything up, as when a machine dies."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)

    def tail(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


class HttpServer(Process):
    """A process that serves HTTP on its port."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self, path: str) -> bool:
        """Whether ``GET path`` is answered 200; fails at once if the process has exited."""
        self.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + path, timeout=2).status_code == 200
        return False

    def metric(self, name: str, **labels: str) -> float | None:
        """The samples of ``name`` on its ``/metrics`` (a counter by its ``_total`` name) that
        carry ``labels``, summed; None if there are none."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        values = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        return float(sum(values)) if values else None


class SimBackend(HttpServer):
    """``lamplighter sim-backend``: a simulated vLLM server, with ``args`` (``--seed 1``, say)
    added to its command line."""

    def __init__(
        self,
        name: str,
        logs: Path,
        model: str = SIM_MODEL,
        *,
        time_scale: float = 1.0,
        args: Sequence[str] = (),
    ) -> None:
        super().__init__(name, logs)
        self.model = model
        self.time_scale = time_scale
        self.args = tuple(args)

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "lamplighter", "sim-backend", "--port", str(self.port)),
            *("--model", self.model, "--time-scale", str(self.time_scale), *self.args),
        ]

    def wait_up(self, seconds: float = 60.0) -> None:
        wait_for(lambda: self.answers("/health"), seconds, f"sim-backend {self.name} answers")

    def table(self, name: str | None = None, /, **settings: object) -> str:
        """The ``[[backends]]`` table that sends its model here: named ``name`` (by default,
        as this process), with ``settings`` over a capacity of 64 and a health check a second.
        Replicas that share a Redis share each backend's slots by its name."""
        settings = {"capacity": 64, "health_interval_s": 1, **settings}
        lines = [
            "[[backends]]",
            f'name = "{name or self.name}"',
            f'url = "{self.url}/v1"',
            f'models = ["{self.model}"]',
            *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
        ]
        return "\n".join(lines) + "\n"


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

    def wait_up(self, seconds: float = 10.0) -> None:
        def up() -> bool:
            self.check_alive()
            return redis_answers(self.url)

        wait_for(up, seconds, f"redis-server {self.name} answers")


class Gateway(HttpServer):
    """``lamplighter serve``, configured the documented way: LAMPLIGHTER_* variables (one for
    each of ``settings``) and the TOML file LAMPLIGHTER_CONFIG names. Nothing of the test's own
    environment leaks in. Unless ``settings`` say otherwise, one of three replicas sharing the
    Redis at REDIS_URL, with no embedded engine, its data in ``<logs>/<name>``, and no drain
    grace (no load balancer needs time to notice it stopping, unless a test puts one in front)."""

    def __init__(self, name: str, logs: Path, **settings: object) -> None:
        super().__init__(name, logs)
        self.settings = {
            "port": self.port,
            "data_dir": logs / name,
            "redis_url": REDIS_URL,
            "replicas": 3,
            "embedded_engine": "false",
            "drain_grace": 0,
            **settings,
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lamplighter", "serve"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
        env.update({f"LAMPLIGHTER_{k.upper()}": str(v) for k, v in self.settings.items()})
        return env

    def ready(self) -> bool:
        return self.answers("/readyz")

    def wait_ready(self, seconds: float = 90.0) -> None:
        wait_for(self.ready, seconds, f"replica {self.name} is ready (/readyz)", every=0.1)

    def logs(self) -> list[dict[str, Any]]:
        """Its log's JSON entries."""
        entries = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def client(self, key: str, timeout: float = 60.0) -> openai.AsyncOpenAI:
        """The official SDK pointed at this replica, retrying nothing (the tests count)."""
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=timeout
        )


P = TypeVar("P", bound=Process)


class Processes:
    """Owns processes and stops every one of them on exit: all are asked to stop at once, then
    each is waited for (and killed if it has not stopped within ten seconds)."""

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
                process.stop(timeout=10)


# -- PostgreSQL -------------------------------------------------------------------------------


def run_sql(url: str, sql: str, *args: object) -> Any:
    """The first value of the first row ``sql`` returns (None if it returns no rows)."""

    async def fetch() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


@contextlib.contextmanager
def fresh_database(*, migrated: bool = True) -> Iterator[str]:
    """A new database on the test server (its plain ``postgresql://`` URL, as an operator
    writes it), migrated unless told not to, dropped afterwards. Where PostgreSQL does not
    answer, the test is skipped."""
    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    name = f"lamplighter_fleet_{uuid.uuid4().hex[:10]}"
    run_sql(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    try:
        url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
        if migrated:
            migrate.upgrade(async_database_url(url))
        yield url
    finally:
        run_sql(POSTGRES_URL, f'DROP DATABASE "{name}" WITH (FORCE)')


def store_plans(database_url: str, config: str) -> None:
    """Migrate the database and store the plans of ``config`` (TOML), as a replica starting
    with it does: for users made before any replica has started."""
    url = async_database_url(database_url)
    migrate.upgrade(url)

    async def store() -> None:
        db = Database(url)
        try:
            await PlanBook(db).load(plans_from_config(tomllib.loads(config)["plans"]))
        finally:
            await db.close()

    asyncio.run(store())


class User(NamedTuple):
    id: uuid.UUID
    key: str


def new_users(database_url: str, *plans: str, admin: bool = False) -> list[User]:
    """One new user per plan, each with an API key; with ``admin``, an admin on the first plan
    after them, so that no replica starting on the database makes one."""

    async def make() -> list[User]:
        db = Database(async_database_url(database_url))
        try:
            accounts = AccountService(db)
            made = []
            roles = [(plan, False) for plan in plans] + ([(plans[0], True)] if admin else [])
            for plan, is_admin in roles:
                email = f"{'admin' if is_admin else plan}-{uuid.uuid4().hex[:10]}@example.org"
                user = await accounts.create_user(email, admin=is_admin, plan=plan)
                made.append(User(user.id, (await accounts.create_key(email, "fleet")).secret))
            return made
        finally:
            await db.close()

    return asyncio.run(make())


def count_admins(database_url: str) -> int:
    return int(run_sql(database_url, "SELECT count(*) FROM users WHERE is_admin"))


def ledger_totals(url: str, users: list[uuid.UUID]) -> tuple[int, int, int, dict[str, int]]:
    """The usage ledger for ``users``: (rows, prompt tokens, completion tokens, rows by finish
    reason)."""

    async def read() -> tuple[int, int, int, dict[str, int]]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT finish_reason, count(*) AS n, sum(prompt_tokens) AS p, "
                "sum(completion_tokens) AS c FROM usage WHERE user_id = ANY($1::uuid[]) "
                "GROUP BY finish_reason",
                users,
            )
        finally:
            await conn.close()
        return (
            sum(r["n"] for r in rows),
            sum(r["p"] for r in rows),
            sum(r["c"] for r in rows),
            {r["finish_reason"]: r["n"] for r in rows},
        )

    return asyncio.run(read())


# -- sim-backend answers ----------------------------------------------------------------------


def long_answer_seed(content: str, tokens: int, *, start: int = 0) -> int:
    """A request ``seed`` for which a sim-backend (its own ``--seed`` left at 0) answers the one
    user message ``content`` with all of ``max_tokens=tokens``: the simulator draws each
    answer's length from the seed and the prompt, so asking one here tells what the server will
    do. Long answers keep a stream (and its slot) busy until the test lets go of it."""
    for seed in range(start, start + 10_000):
        sim = simulation.SimBackend(simulation.SimSettings())
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": tokens}
        if sim.submit({**body, "seed": seed}).request.output_tokens >= tokens:
            return seed
    raise AssertionError(f"no seed gives {tokens} tokens for {content!r}")


# -- a load balancer and a load ---------------------------------------------------------------


class Balancer:
    """Round robin over the replicas whose ``/readyz`` answered 200 at the last check (every
    ``interval`` seconds), like an ingress, a cloud load balancer or a Kubernetes Service.
    Strict: nothing is retried, not even a refused connection (which becomes a 502), so a
    replica that stops listening before the balancer has noticed shows as a failed request.
    Answers stream through unbuffered."""

    def __init__(self, upstreams: list[str], interval: float = 0.1) -> None:
        self.upstreams = list(upstreams)
        self.interval = interval
        self.ready: set[str] = set()
        self.sent: dict[str, int] = dict.fromkeys(upstreams, 0)
        self.refused = 0  # connections a replica refused: 502s
        self._turn = itertools.count()
        self._client: httpx.AsyncClient | None = None
        self._checker: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [
            (k.decode(), v.decode())
            for k, v in scope["headers"]
            if k.lower() not in (b"host", b"connection", b"content-length")
        ]
        query = scope["query_string"].decode()
        path = scope["path"] + (f"?{query}" if query else "")
        assert self._client is not None
        upstream = self._pick()
        if upstream is None:
            await _answer(send, 502, b"no replica is ready")
            return
        request = self._client.build_request(
            scope["method"], upstream + path, headers=headers, content=body
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.ConnectError:
            self.refused += 1
            await _answer(send, 502, b"the replica refused the connection")
            return
        self.sent[upstream] += 1
        try:
            hop = {b"connection", b"transfer-encoding", b"content-length", b"keep-alive"}
            raw = [(k, v) for k, v in response.headers.raw if k.lower() not in hop]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": raw}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    def _pick(self) -> str | None:
        ready = [u for u in self.upstreams if u in self.ready]
        return ready[next(self._turn) % len(ready)] if ready else None

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                timeout = httpx.Timeout(60, connect=2)
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
                self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
                self._checker = asyncio.create_task(self._check())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._checker is not None:
                    self._checker.cancel()
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _check(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0)) as client:

            async def probe(upstream: str) -> None:
                try:
                    ok = (await client.get(upstream + "/readyz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.ready.add(upstream)
                else:
                    self.ready.discard(upstream)

            while True:
                await asyncio.gather(*(probe(u) for u in self.upstreams))
                await asyncio.sleep(self.interval)


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def balancer(upstreams: list[str]) -> Iterator[tuple[Balancer, str]]:
    """The balancer, served on a port of its own: (balancer, its base URL)."""
    front = Balancer(upstreams)
    with ThreadedServer(front, free_port()) as server:
        yield front, server.base_url


@dataclass
class Load:
    """Clients that ask without pause through ``base_url``: streamed and plain answers in turn,
    each recording exactly what it received."""

    base_url: str
    keys: list[str]
    model: str = SIM_MODEL
    workers: int = 6
    seed: int = 0
    # Answers' lengths: with the sim at time scale 4 (about 30 ms a token), up to four seconds,
    # longer than a test's drain grace, so that a stopping replica has streams to wait for.
    max_tokens: tuple[int, int] = (5, 140)
    ok: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def requests(self) -> int:
        return self.ok + len(self.failures)

    def wait_for_requests(self, more: int, seconds: float = 30) -> None:
        target = self.requests + more
        wait_for(lambda: self.requests >= target, seconds, f"{more} more requests are answered")

    def _client(self, base_url: str, key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=base_url + "/v1",
            api_key=key,
            max_retries=0,  # a failure is a failure: the SDK may not hide one by retrying
            timeout=60,
        )

    def _work(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        with self._client(self.base_url, self.keys[index % len(self.keys)]) as client:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                question = f"worker {index} question {turn}: {rng.random():.6f}"
                self._ask(client, question, rng.randint(*self.max_tokens), stream=bool(turn % 2))

    def stream_once(self, base_url: str, tokens: int, started: threading.Event) -> None:
        """One streamed answer of exactly ``tokens`` tokens straight from ``base_url`` (a
        replica the balancer had chosen, say), counted like the others; ``started`` is set at
        its first token."""
        question = "Tell me everything about lamps."
        seed = long_answer_seed(question, tokens)
        with self._client(base_url, self.keys[0]) as client:
            self._ask(client, question, tokens, True, started, seed)

    def _ask(
        self,
        client: openai.OpenAI,
        question: str,
        max_tokens: int,
        stream: bool,
        started: threading.Event | None = None,
        seed: int | None = None,
    ) -> None:
        try:
            if stream:
                usage, finish = self._stream(client, question, max_tokens, started, seed)
            else:
                usage, finish = self._plain(client, question, max_tokens)
            if finish not in ("stop", "length") or usage is None:
                raise AssertionError(f"finish_reason {finish!r}, usage {usage!r}")
        except Exception as error:
            with self._lock:
                self.failures.append(f"{type(error).__name__}: {error}")
            return
        finally:
            if started is not None:
                started.set()  # also when it failed: nobody waits for nothing
        with self._lock:
            self.ok += 1
            self.streamed += stream
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens

    def _plain(self, client: openai.OpenAI, question: str, max_tokens: int) -> tuple[Any, Any]:
        answer = client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
        )
        return answer.usage, answer.choices[0].finish_reason

    def _stream(
        self,
        client: openai.OpenAI,
        question: str,
        max_tokens: int,
        started: threading.Event | None = None,
        seed: int | None = None,
    ) -> tuple[Any, Any]:
        usage = finish = None
        stream = client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            seed=seed,
        )
        for chunk in stream:
            if started is not None and chunk.choices and chunk.choices[0].delta.content:
                started.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
        return usage, finish
