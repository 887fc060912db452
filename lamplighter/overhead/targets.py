"""The servers under test, each a process of its own: the mock upstream, ``lamplighter serve``
in front of it, and the LiteLLM proxy in front of it (installed, once, into a virtual
environment of its own). Their CPU time and memory are read from ``/proc``, summed over each
server's process tree.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "mock-model"
READY_SECONDS = 180.0
LITELLM_SPEC = "litellm[proxy]"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class NotAvailable(RuntimeError):
    """A target could not be set up or started; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers a server forks count as the server)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of ``pids`` (every thread of each)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (steal included: the host took it)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def _post(url: str, body: dict[str, Any], key: str = "", timeout: float = 60.0) -> tuple[int, str]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


@dataclass
class Target:
    """One server: its name, where to send requests, the key to send, and its process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    api_key: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return tree(self.process.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, path: str, seconds: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.alive():
                raise NotAvailable(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if _get(self.url + path) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise NotAvailable(f"{self.name} was not ready within {seconds:.0f} s:\n{self.log_tail()}")

    def check(self, stream: bool = False) -> None:
        """One completion through the target; NotAvailable unless it answers 200."""
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "ready?"}],
            "max_tokens": 2,
            "stream": stream,
        }
        status, text = _post(self.url + "/v1/chat/completions", body, self.api_key)
        if status != 200:
            raise NotAvailable(f"{self.name} answered {status}: {text[:300]}")

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    with log.open("wb") as out:
        # A session of its own: the whole tree stops together, and Ctrl-C reaches only the
        # benchmark, which then stops the servers in order.
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_mock(workdir: Path, chunks: int, delay_ms: float = 0.0) -> Target:
    port = free_port()
    log = workdir / f"mock-{port}.log"
    command = [sys.executable, "-m", "lamplighter.overhead.mock", "--port", str(port)]
    command += ["--model", MODEL, "--chunks", str(chunks), "--chunk-delay-ms", str(delay_ms)]
    target = Target("mock", port, _spawn(command, log), log)
    target.wait_ready("/health", 30)
    return target


def start_floor(workdir: Path, upstream: Target, *, durable: bool = False) -> Target:
    """The floor (``lamplighter/overhead/floor.py``) in front of ``upstream``: ``floor``, or,
    committing each exchange to a fresh SQLite database, ``floor-db``."""
    name = "floor-db" if durable else "floor"
    port = free_port()
    log = workdir / f"{name}.log"
    command = [sys.executable, "-m", "lamplighter.overhead.floor", "--port", str(port)]
    command += ["--upstream", upstream.url]
    if durable:
        command += ["--durable", str(workdir / f"{name}-{port}.db")]
    target = Target(name, port, _spawn(command, log), log, api_key="floor")
    target.wait_ready("/health", 30)
    return target


GATEWAY_CONFIG = """\
# Limits high enough never to refuse: the benchmark measures the work, not the policy.
[plans.team]
cache_ttl_s = 0
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
tokens_per_day = 1000000000000
concurrent_streams = 100000
queue_patience_s = 600

[[backends]]
name = "mock"
url = "{url}/v1"
models = ["{model}"]
capacity = {capacity}
health_url = "/health"
metrics_url = ""
first_token_timeout_s = 600
"""


def start_gateway(
    workdir: Path,
    upstream: Target,
    *,
    capacity: int = 1024,
    redis_url: str | None = None,
    database_url: str | None = None,
) -> Target:
    """``lamplighter serve`` with a fresh SQLite store, the mock as its one backend, and an API
    key of a user on the ``team`` plan (raised above). With ``redis_url``, its traffic state
    (limits, stream leases, backend slots, cache) is in Redis, as for several replicas: the
    target is ``gw-redis``. With ``database_url``, its store is that PostgreSQL database, as for
    several replicas: the target is ``gw-pg``."""
    name = "gw-redis" if redis_url else "gw-pg" if database_url else "gateway"
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "lamplighter.toml"
    config.write_text(GATEWAY_CONFIG.format(url=upstream.url, model=MODEL, capacity=capacity))
    port = free_port()
    # Nothing inherited: this shell's LAMPLIGHTER_DATABASE_URL must not point the benchmark at
    # somebody's database.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
    env.update(
        LAMPLIGHTER_CONFIG=str(config),
        LAMPLIGHTER_DATA_DIR=str(home / "data"),
        LAMPLIGHTER_HOST="127.0.0.1",
        LAMPLIGHTER_PORT=str(port),
        LAMPLIGHTER_EMBEDDED_ENGINE="false",
        # No load balancer in front: stopping need not keep serving while one notices.
        LAMPLIGHTER_DRAIN_GRACE="0",
    )
    if redis_url:
        env["LAMPLIGHTER_REDIS_URL"] = redis_url
    if database_url:
        env["LAMPLIGHTER_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "lamplighter", "serve"]
    target = Target(name, port, _spawn(command, home / "serve.log", env), home / "serve.log")
    try:
        target.wait_ready("/readyz")
        if redis_url and not _redis_up(target):
            raise NotAvailable(f"the gateway does not reach Redis at {redis_url}")
        target.api_key = _api_key(env)
    except NotAvailable:
        target.stop()
        raise
    return target


# The user whose key drives the load: made by the benchmark, so a PostgreSQL database used
# before (whose first admin is not the one this run would make) serves as well as a new one.
BENCH_USER = "overhead-bench@localhost"


def _api_key(env: dict[str, str]) -> str:
    def lamplighter(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lamplighter", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    made = lamplighter("users", "create", BENCH_USER, "--plan", "team")
    if made.returncode != 0 and "already exists" not in made.stderr:
        raise NotAvailable(f"`lamplighter users create` failed: {made.stderr.strip()[-500:]}")
    key = lamplighter("keys", "create", BENCH_USER)
    words = key.stdout.split()
    if key.returncode != 0 or not words:
        raise NotAvailable(f"`lamplighter keys create` failed: {key.stderr.strip()[-500:]}")
    return words[-1]


def _redis_up(target: Target) -> bool:
    """Whether the gateway's ``lamplighter_redis_up`` gauge says 1 (it fails open otherwise,
    and would measure nothing of Redis)."""
    try:
        with urllib.request.urlopen(target.url + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, OSError):
        return False
    return any(line.split() == ["lamplighter_redis_up", "1.0"] for line in text.splitlines())


def litellm_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lamplighter" / "litellm-venv"


def ensure_litellm(venv: Path, say: Callable[[str], None]) -> Path:
    """The ``litellm`` command in ``venv``, installing ``litellm[proxy]`` there first if it is
    missing (once; minutes). NotAvailable, with pip's last words, when that fails."""
    command = venv / "bin" / "litellm"
    if command.is_file():
        return command
    say(f"installing {LITELLM_SPEC} into {venv} (once; a few minutes)")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_SPEC],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NotAvailable(f"`{shlex.join(step)}` failed: {exc}") from exc
        if done.returncode != 0:
            said = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise NotAvailable(f"`{shlex.join(step)}` failed ({done.returncode}):\n{said}")
    if not command.is_file():
        raise NotAvailable(f"{LITELLM_SPEC} installed, but {command} is missing")
    return command


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {url}/v1
      api_key: sk-mock
general_settings:
  master_key: {key}
litellm_settings:
  drop_params: true
  telemetry: false
"""


def start_litellm(workdir: Path, upstream: Target, say: Callable[[str], None]) -> Target:
    """The LiteLLM proxy with one uvicorn worker, no database (so no spend tracking and no
    virtual keys: the master key, checked in memory, is the one key), the mock as its one
    model."""
    command = ensure_litellm(litellm_venv(), say)
    home = workdir / "litellm"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    key = "sk-bench-" + secrets.token_hex(16)
    config.write_text(LITELLM_CONFIG.format(model=MODEL, url=upstream.url, key=key))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "OPENAI"))}
    # The proxy fetches a price list from GitHub at start; the one it ships with will do.
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    args = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--num_workers", "1"]
    log = home / "litellm.log"
    target = Target("litellm", port, _spawn(args, log, env), log, api_key=key)
    try:
        target.wait_ready("/health/liveliness")
        target.check()
        target.check(stream=True)
    except NotAvailable:
        target.stop()
        raise
    return target
