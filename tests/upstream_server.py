"""A real HTTP server on 127.0.0.1 (a free port) for upstream backends to talk to, answering
every request with a test's own handler: statuses, event streams, headers, a connection cut
mid-answer (``request.transport``), and no server at all (:meth:`Upstream.refuse`).

``async with Upstream(handler)`` serves from the running event loop (async tests);
``with serve_in_thread(handler)`` from a loop in a thread of its own, alive while sync code runs
(a :class:`~tests.conftest.LiveServer` whose backends talk to it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from lamplighter.engines.base import Backend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, LiveServer, make_settings

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Upstream:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0  # chosen when it first listens
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """The server's root (an upstream's base URL is this plus ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # A handler still running when its client leaves is cancelled, as in a real server.
        server = web.Server(self.handler, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        await self.listen()

    async def listen(self) -> None:
        """Accept connections (again) on its port."""
        assert self._runner is not None and self._site is None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def refuse(self) -> None:
        """Stop listening: new connections to its port are refused. Connections already open
        (a client's kept-alive one) stay open; a handler ends one with ``force_close()``."""
        assert self._site is not None
        await self._site.stop()
        self._site = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


@contextmanager
def serve_in_thread(handler: Handler) -> Iterator[Upstream]:
    """An :class:`Upstream` served by an event loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="upstream-server", daemon=True)
    thread.start()
    upstream = Upstream(handler)
    try:
        asyncio.run_coroutine_threadsafe(upstream.start(), loop).result(timeout=10)
        yield upstream
    finally:
        try:
            asyncio.run_coroutine_threadsafe(upstream.close(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


@contextmanager
def recording(
    answer: Callable[[dict[str, Any]], bytes],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI-compatible server in a thread, as vLLM would be: each chat completion answered
    with the event stream ``answer(body)`` makes of its request; its base URL (``.../v1``) and
    the request bodies it received, in order."""
    received: list[dict[str, Any]] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/v1/chat/completions":
            return web.json_response({"object": "list", "data": []})
        body = await request.json()
        received.append(body)
        return web.Response(body=answer(body), content_type="text/event-stream")

    with serve_in_thread(handle) as upstream:
        yield upstream.url + "/v1", received


@contextmanager
def gateway_over(
    url: str,
    models: tuple[str, ...],
    data_dir: Path,
    *,
    api_key: str = "",
    capacity: int = 2,
    **settings: Any,
) -> Iterator[LiveServer]:
    """A gateway on the roomy plan whose one backend is the OpenAI-compatible server at
    ``url`` serving ``models``; ``settings`` as :func:`make_settings` takes them."""
    config = UpstreamConfig("upstream", url, models, capacity=capacity, api_key=api_key)

    async def backends(_: Settings) -> list[Backend]:
        return [UpstreamBackend(config)]

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "c.toml").write_text(ROOMY_PLAN)
    with LiveServer(
        make_settings(data_dir, config=data_dir / "c.toml", **settings), backends
    ) as live:
        yield live
        live.close_clients()
