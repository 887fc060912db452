"""Graceful shutdown: a stopping replica drains before it goes, losing no request and no usage.

On SIGTERM (or Ctrl-C) the replica goes through these phases, counted from the signal:

``draining``
    ``/readyz`` answers 503 ``draining`` at once, so that load balancers and Kubernetes take the
    replica out, while it goes on serving whatever still reaches it for ``DRAIN_GRACE`` seconds
    (none after Ctrl-C: no load balancer watches a terminal). Responses carry
    ``connection: close``, so clients open their next connection elsewhere.
``refusing``
    New requests get 503 ``server_shutting_down`` with ``retry-after: 1`` in OpenAI's error shape
    (the probes and ``/metrics`` still answer). Requests already running, streams included, run
    to their end; the replica exits as soon as none is left.
``cutting``
    ``SHUTDOWN_TIMEOUT`` seconds after the signal, the answers still streaming are ended: each
    stream's last chunk carries ``finish_reason: "length"``, then its usage (when asked for), an
    error event that says why, and ``data: [DONE]``; a non-streamed answer returns what was
    generated. Their usage is settled like any other answer's (stored as ``cut``, finish reason
    ``shutdown``). Requests still waiting for a backend slot get the 503.

Then uvicorn's own shutdown runs: it stops listening, closes the idle connections, waits a moment
for connections (there are none left by now, so its ``timeout_graceful_shutdown`` is only a
backstop) and runs the lifespan's shutdown, which closes the backends and the database. A second
signal during the drain skips to ``cutting``; a third Ctrl-C is uvicorn's forced exit.

:class:`GracefulServer` is ``uvicorn.Server`` with this in front of its shutdown; :class:`DrainGate`
is the ASGI middleware that counts requests in flight and refuses new ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamplighter.exceptions import ShuttingDown

if TYPE_CHECKING:
    from lamplighter.chat import ChatService

log = logging.getLogger(__name__)

# Paths that answer during the whole drain and are not counted as work in flight.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# After the deadline: how long the ended streams get to send their last events.
CUT_WAIT_S = 5.0
# How often the drain looks at the requests in flight.
POLL_S = 0.02
REFUSAL = "This server is restarting and takes no new requests. Try again: another one will answer."
CUT = "The server restarted before this answer was finished. Ask again to continue it."


class Drain:
    """The drain's state, shared by the server (which starts it), the middleware (which refuses
    and counts), ``/readyz`` and the metrics."""

    def __init__(self, *, grace_s: float, timeout_s: float) -> None:
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self.phase = "serving"  # then draining, refusing, (cutting,) stopped
        self.since: float | None = None  # time.monotonic() of the signal
        self.interactive = False  # Ctrl-C: no grace
        self.hurry = False  # a second signal: cut now
        self.signals = 0
        self.in_flight = 0  # requests being served, probes left out
        self.refused = 0
        self.cut = 0
        self.chat: ChatService | None = None  # set by the lifespan, once there is one

    @property
    def draining(self) -> bool:
        return self.phase != "serving"

    def request(self, *, interactive: bool = False) -> None:
        """A stop was asked for (called from a signal handler: it only sets fields)."""
        self.signals += 1
        if self.since is None:
            self.since = time.monotonic()
            self.interactive = interactive
            self.phase = "draining"
        else:
            self.hurry = True

    async def run(self) -> None:
        """The phases after ``request``; returns when the server may shut down."""
        since = self.since if self.since is not None else time.monotonic()
        deadline = since + self.timeout_s
        grace = 0.0 if self.interactive else min(self.grace_s, self.timeout_s)
        log.info(
            "draining: /readyz answers 503; new requests are served for %g s more",
            grace,
            extra={"phase": "draining", "in_flight": self.in_flight, "deadline_s": self.timeout_s},
        )
        await self._until(lambda: False, since + grace)
        self.phase = "refusing"
        log.info(
            "no longer taking requests; waiting for %d in flight",
            self.in_flight,
            extra={"phase": "refusing", "in_flight": self.in_flight},
        )
        finished = await self._until(lambda: self.in_flight == 0, deadline)
        if not finished:
            self.phase = "cutting"
            self.cut = self.chat.interrupt_all(CUT) if self.chat is not None else 0
            log.warning(
                "shutdown deadline: ended %d answers still streaming, %d requests in flight",
                self.cut,
                self.in_flight,
                extra={"phase": "cutting", "cut": self.cut, "in_flight": self.in_flight},
            )
            cut_until = time.monotonic() + CUT_WAIT_S
            await self._until(lambda: self.in_flight == 0, cut_until, hurry=False)
        self.phase = "stopped"
        log.info(
            "drained in %.2f s",
            time.monotonic() - since,
            extra={"phase": "stopped", "refused": self.refused, "cut": self.cut},
        )

    async def _until(self, done: Callable[[], bool], until: float, *, hurry: bool = True) -> bool:
        """Wait until ``done()`` (True), or the time ``until`` or (with ``hurry``) a second
        signal (False)."""
        while not done():
            if (hurry and self.hurry) or time.monotonic() >= until:
                return False
            await asyncio.sleep(POLL_S)
        return True


def _refusal() -> tuple[list[tuple[bytes, bytes]], bytes]:
    error = ShuttingDown(REFUSAL, retry_after=1)
    headers = [
        (b"content-type", b"application/json"),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in error.headers.items()),
    ]
    return headers, json.dumps(error.body()).encode()


class DrainGate:
    """ASGI middleware: counts the requests in flight, refuses new ones once the drain's grace
    is over, and asks clients to close their connections while the server drains."""

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        drain = self.drain
        if drain.phase not in ("serving", "draining"):
            drain.refused += 1
            headers, body = _refusal()
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start" and drain.phase != "serving":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        drain.in_flight += 1
        try:
            await self.app(scope, receive, send_)
        finally:
            drain.in_flight -= 1


class DrainMetrics(Collector):
    """``lamplighter_draining``, requests in flight, and what the drain refused and cut."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def collect(self) -> Iterator[Metric]:
        drain = self.drain
        yield GaugeMetricFamily(
            "lamplighter_draining",
            "1 while this server drains for a shutdown (/readyz answers 503), else 0.",
            value=1.0 if drain.draining else 0.0,
        )
        yield GaugeMetricFamily(
            "lamplighter_http_requests_in_flight",
            "HTTP requests being served now, probes and /metrics left out.",
            value=float(drain.in_flight),
        )
        yield CounterMetricFamily(
            "lamplighter_drain_refused",
            "Requests refused with 503 server_shutting_down because this server was stopping.",
            value=float(drain.refused),
        )
        yield CounterMetricFamily(
            "lamplighter_drain_cut",
            "Answers ended early because the shutdown deadline passed.",
            value=float(drain.cut),
        )


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which drains (see the module) before its own shutdown begins."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: set fields only, the main loop's next tick acts on them.
        if not self.started or self.should_exit:
            super().handle_exit(sig, frame)  # still starting, or already past the drain
            return
        if self.drain.signals >= 2 and sig == signal.SIGINT:
            self.should_exit = self.force_exit = True  # a third Ctrl-C: out now, as uvicorn does
            return
        if self.drain.since is None:
            self._captured_signals.append(sig)  # re-raised once the server is down, as uvicorn does
        self.drain.request(interactive=sig == signal.SIGINT)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.since is not None and self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        if self._draining is not None and self._draining.done():
            self.should_exit = True
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        try:
            await self.drain.run()
        except Exception:
            log.exception("the drain failed; shutting down at once")
