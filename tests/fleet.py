"""A small production fleet for end-to-end tests: real ``lamplighter serve`` processes on
PostgreSQL and Redis, a ``lamplighter sim-backend`` as their GPU server, a load balancer in front
that health-checks ``/readyz`` the way nginx, an ingress or a Kubernetes Service does, and a
steady load of ``openai`` SDK clients that records what every request got.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import redis

from lamplighter.accounts import AccountService
from lamplighter.settings import async_database_url
from lamplighter.simulation import server as sim
from lamplighter.store import migrate
from lamplighter.store.database import Database
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import plans_from_config
from tests.conftest import POSTGRES_URL, ThreadedServer, _postgres_available, free_port

REDIS_URL = os.environ.get("LAMPLIGHTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
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


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def redis_answers() -> bool:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def _admin_sql(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """An empty PostgreSQL database of its own (plain ``postgresql://`` URL), dropped after."""
    import pytest

    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    if not redis_answers():
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    name = f"lamplighter_fleet_{uuid.uuid4().hex[:10]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        _admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def make_users(url: str, count: int, plans: str = ROOMY) -> list[tuple[uuid.UUID, str]]:
    """Migrate the database, store the ``plans`` (TOML) and make ``count`` users on the first
    of them with a key each, plus an admin (so no replica makes one at start): [(user id,
    key)], the admin's last."""
    table = tomllib.loads(plans)["plans"]
    plan = next(iter(table))
    url = async_database_url(url)
    migrate.upgrade(url)

    async def make() -> list[tuple[uuid.UUID, str]]:
        db = Database(url)
        accounts = AccountService(db)
        made = []
        try:
            await PlanBook(db).load(plans_from_config(table))
            for index in range(count + 1):
                admin = index == count
                email = f"{'admin' if admin else 'load'}-{uuid.uuid4().hex[:8]}@example.org"
                user = await accounts.create_user(email, admin=admin, plan=plan)
                made.append((user.id, (await accounts.create_key(email, "fleet")).secret))
        finally:
            await db.close()
        return made

    return asyncio.run(make())


def _environment(**values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
    env.update({f"LAMPLIGHTER_{k.upper()}": str(v) for k, v in values.items()})
    return env


class Process:
    """A child process whose output goes to a log file."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=out, env=self.env, cwd=Path(__file__).parents[1]
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> bool:
        if not self.alive:
            raise AssertionError(f"{self.command[3]} exited: {self.log.read_text()[-3000:]}")
        return True

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and wait for the exit; returns its status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class SimBackend(Process):
    """``lamplighter sim-backend``: a simulated vLLM server."""

    def __init__(self, log_dir: Path, time_scale: float = 1.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "lamplighter", "sim-backend", "--port", str(self.port)]
        command += ["--model", SIM_MODEL, "--time-scale", str(time_scale)]
        super().__init__(command, log_dir / "sim.log")

    def wait_up(self) -> None:
        def up() -> bool:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            return False

        wait_for(up, 30, "the sim backend")

    def table(self, name: str, **extra: object) -> str:
        lines = [
            "[[backends]]",
            f'name = "{name}"',
            f'url = "{self.url}/v1"',
            f'models = ["{SIM_MODEL}"]',
            "capacity = 64",
            "health_interval_s = 1",
            *(f"{key} = {json.dumps(value)}" for key, value in extra.items()),
        ]
        return "\n".join(lines) + "\n"


class Replica(Process):
    """One ``lamplighter serve`` on its own port, sharing the database and Redis."""

    def __init__(self, index: int, work: Path, database_url: str, config: Path, **env: object):
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir = work / f"replica-{index}"
        settings = {
            "database_url": database_url,
            "redis_url": REDIS_URL,
            "replicas": 3,
            "config": config,
            "port": self.port,
            "data_dir": data_dir,
            "embedded_engine": "false",
            "log_level": "info",
            **env,
        }
        command = [sys.executable, "-m", "lamplighter", "serve"]
        super().__init__(command, work / f"replica-{index}.log", _environment(**settings))

    def ready(self) -> bool:
        self.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        return False

    def wait_ready(self, seconds: float = 60) -> None:
        wait_for(self.ready, seconds, f"replica {self.index} to be ready")

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines


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
        wait_for(lambda: self.requests >= target, seconds, f"{more} more requests")

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
        question, seed = long_question(tokens)
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


def long_question(tokens: int) -> tuple[str, int]:
    """A question and a seed for which the simulated GPU's answer runs to at least ``tokens``
    tokens (its length is drawn from the seed and the prompt's size; see simulation/server.py)."""
    question = "Tell me everything about lamps."
    prompt = sim._prompt_tokens({"messages": [{"role": "user", "content": question}]})
    for seed in range(1000):
        draw = random.Random(f"{sim.SimSettings().seed}:{seed}:{prompt}")
        length = draw.lognormvariate(math.log(sim.OUTPUT_MEDIAN), sim.OUTPUT_SIGMA)
        if round(length) >= tokens:
            return question, seed
    raise AssertionError(f"no seed draws {tokens} tokens")


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


def run_sql(url: str, sql: str, *args: object) -> Any:
    """The first value of the first row ``sql`` returns."""

    async def fetch() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())
