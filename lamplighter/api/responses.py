"""Responses that notice when the client goes away.

Starlette's ``StreamingResponse`` only learns of a disconnect when its next write fails, and then
leaves the body iterator to the garbage collector; uvicorn never tells a plain response at all.
Generation is the expensive part, so these responses watch ``http.disconnect`` beside the work
and cancel it the moment the client leaves: the backend stops within a token. ``finally_`` runs
whatever became of the work (even if it never started), so the caller can settle what it owes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (a wait in the admission queue, say), cancelling it the moment the client
    disconnects, which raises ``ClientDisconnect``. The request body must have been read."""
    worker = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        worker.cancel()
        raise
    finally:
        watcher.cancel()
    if worker not in done:
        worker.cancel()
    await asyncio.gather(worker, watcher, return_exceptions=True)
    if worker.cancelled():
        raise ClientDisconnect()
    return worker.result()


async def serve_until_disconnect(work: Awaitable[None], receive: Receive) -> bool:
    """Run ``work`` (which sends a response) until it ends or the client disconnects, whichever
    comes first. True if it finished; False if the client left (the work was cancelled, or its
    sends failed). Any other error is raised: that is a bug, not a client that left."""
    worker = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (worker, watcher):
            task.cancel()
        results = await asyncio.gather(worker, watcher, return_exceptions=True)
    error = results[0]
    if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError | OSError):
        raise error
    return error is None


class EventStreamResponse(Response):
    """Server-sent events from an async iterator of already-encoded ``data:`` frames."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        *,
        finally_: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.events = events
        self.finally_ = finally_
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for frame in self.events:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await serve_until_disconnect(pump(), receive)
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]
            if self.finally_ is not None:
                await self.finally_()


class DeferredJSONResponse(Response):
    """A JSON body computed only once the response is being sent, abandoned on disconnect."""

    media_type = "application/json"

    def __init__(
        self,
        produce: Callable[[], Awaitable[tuple[int, Any, dict[str, str]]]],
        headers: dict[str, str] | None = None,
        *,
        finally_: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.produce = produce
        self.finally_ = finally_
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def respond() -> None:
            status, content, extra = await self.produce()
            body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
            headers = [
                (name, value)
                for name, value in self.raw_headers
                if name not in {b"content-length", b"content-type"}
            ]
            headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
            headers += [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        try:
            await serve_until_disconnect(respond(), receive)
        finally:
            if self.finally_ is not None:
                await self.finally_()


def sse(payload: Any) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


SSE_DONE = b"data: [DONE]\n\n"
