"""Is an upstream fit to take requests? Two independent witnesses:

- a :class:`Breaker` (circuit breaker) fed by the upstream's own requests: after
  ``failures_to_open`` consecutive failures it opens and refuses everything for ``cooldown_s``,
  then lets one trial request through (half-open); the trial's success closes it, its failure
  opens it again. A pure state machine: time comes in as an argument.
- a :class:`Probe` that polls the upstream's health endpoint every few seconds and, with the
  same visit, reads the load it publishes on its Prometheus ``/metrics`` (vLLM's
  ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` / ``vllm:kv_cache_usage_perc``,
  SGLang's ``sglang:num_running_reqs`` / ``sglang:num_queue_reqs`` / ``sglang:token_usage``).

The router sends requests only to upstreams whose probe is up and whose breaker lets them through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp

from lamplighter.traffic.clock import Clock

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "half_open", "open"]


@dataclass
class Breaker:
    failures_to_open: int = 3
    cooldown_s: float = 10.0
    state: BreakerState = "closed"
    failures: int = 0  # consecutive, while closed
    opened_at: float = 0.0
    trial: bool = False  # half-open: the one trial request is out

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")

    def allows(self, now: float) -> bool:
        """Would a request be let through now? Changes nothing (the router asks this)."""
        if self.state == "closed":
            return True
        if self.state == "half_open":
            return not self.trial
        return now >= self.opened_at + self.cooldown_s

    def acquire(self, now: float) -> bool:
        """Take permission to send a request now. After the cool-down the first taker becomes
        the half-open trial, and everyone else is refused until it has an outcome."""
        if not self.allows(now):
            return False
        if self.state != "closed":
            self.state, self.trial = "half_open", True
        return True

    def succeeded(self) -> None:
        """The upstream produced a token (or answered sensibly): it works."""
        self.state, self.failures, self.trial = "closed", 0, False

    def failed(self, now: float) -> None:
        """A connect error, a 5xx, a timeout before the first token or a broken stream. While
        half-open any failure (the trial's, or a late one) means another full cool-down."""
        if self.state == "half_open":
            self.state, self.opened_at, self.trial = "open", now, False
        elif self.state == "closed":
            self.failures += 1
            if self.failures >= self.failures_to_open:
                self.state, self.opened_at = "open", now
        # Already open: a late failure of a request sent before it opened changes nothing.

    def abandoned(self) -> None:
        """A request left with no outcome (its client went away first): if it was the trial,
        the next request may try instead."""
        if self.state == "half_open":
            self.trial = False

    def retry_after(self, now: float) -> float:
        """Seconds until it lets a request through (0: it does now)."""
        if self.allows(now):
            return 0.0
        if self.state == "open":
            return self.opened_at + self.cooldown_s - now
        return self.cooldown_s  # half-open with the trial out: at worst it opens again


@dataclass(frozen=True)
class Load:
    """What an inference server says about itself, read from its ``/metrics``."""

    running: float
    waiting: float
    kv_usage: float  # 0..1
    at: float  # monotonic time it was read


RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")


def parse_load(text: str, at: float) -> Load | None:
    """The load in a Prometheus text exposition; None when it publishes none of the names we
    know. Samples of one name are summed over their labels (several models or data-parallel
    ranks); KV usage is the highest."""
    sums: dict[str, float] = {}
    kv: float | None = None
    for line in text.splitlines():
        if not line.startswith(("vllm:", "sglang:")):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name = match.group(1)
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        if name in KV_USAGE:
            kv = value if kv is None else max(kv, value)
        elif name in RUNNING or name in WAITING:
            sums[name] = sums.get(name, 0.0) + value
    if not sums and kv is None:
        return None
    running = max((sums.get(name, 0.0) for name in RUNNING), default=0.0)
    waiting = max((sums.get(name, 0.0) for name in WAITING), default=0.0)
    return Load(running, waiting, min(1.0, max(0.0, kv or 0.0)), at)


class Probe:
    """Polls ``health_url`` (200 is up, anything else or no answer is down) every
    ``interval_s``, and scrapes ``metrics_url`` for the published load when there is one."""

    def __init__(
        self,
        name: str,
        health_url: str,
        metrics_url: str | None,
        interval_s: float,
        clock: Clock,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        """Each visit waits at most ``timeout_s`` for every read (and for a connection, at most
        two seconds to connect)."""
        self.name = name
        self.health_url = health_url
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.clock = clock
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.up = True  # until a check says otherwise
        self.on_down: Callable[[], None] | None = None  # told when a check finds it down
        self.load: Load | None = None
        self.checks = 0
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None  # made in the running loop, at first use
        self._stopped = False

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            if self._stopped:
                raise RuntimeError(f"the health checks of backend {self.name} are stopped")
            self._http = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(limit=2),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.timeout_s,  # a free connection, and a new one made
                    sock_connect=min(self.timeout_s, 2.0),
                    sock_read=self.timeout_s,
                ),
            )
        return self._http

    async def _get(self, url: str) -> tuple[int, str]:
        """The status and text of a GET (aiohttp.ClientError or TimeoutError if none came)."""
        async with self._session().get(url, proxy=env_proxy(url)) as response:
            return response.status, await response.text(errors="replace")

    @property
    def published(self) -> Load | None:
        """The last load read, if it is recent (three intervals); stale numbers are worse than
        none, because the router then trusts its own count."""
        load = self.load
        if load is None or self.clock.monotonic() - load.at > 3 * self.interval_s:
            return None
        return load

    async def check(self) -> bool:
        try:
            status, _ = await self._get(self.health_url)
            healthy, why = status == 200, f"answered {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            healthy, why = False, f"{type(exc).__name__}: {exc}"
        if healthy and self.metrics_url:
            await self._scrape(self.metrics_url)
        elif not healthy:
            self.load = None
        if healthy != self.up:
            if healthy:
                log.warning("backend %s is up again", self.name)
            else:
                log.warning(
                    "backend %s is down: health check %s %s", self.name, self.health_url, why
                )
        went_down = self.up and not healthy
        self.up = healthy
        self.checks += 1
        if went_down and self.on_down is not None:
            self.on_down()
        return healthy

    async def _scrape(self, url: str) -> None:
        try:
            status, text = await self._get(url)
        except (aiohttp.ClientError, TimeoutError):
            self.load = None
            return
        if status != 200:
            self.load = None
            return
        self.load = parse_load(text, self.clock.monotonic())

    async def start(self) -> None:
        """Check once now (so readiness is right from the start), then keep checking."""
        await self.check()
        self._task = asyncio.create_task(self._run(), name=f"probe-{self.name}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # a bug here must not end the checks for good
                log.exception("health check of backend %s failed", self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._stopped = True
        if self._http is not None:
            await self._http.close()


def env_proxy(url: str) -> str | None:
    """The HTTP proxy the environment names for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, less ``NO_PROXY``), as httpx, the client before aiohttp, honoured; None for
    none. aiohttp's own ``trust_env`` would also look for a ``.netrc`` on every request."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    return proxy if proxy and proxy.startswith(("http://", "https://")) else None
