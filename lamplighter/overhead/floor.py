"""The floor under the gateway: the least a Python proxy on the gateway's own stack does.

uvicorn with httptools and uvloop (as ``lamplighter serve`` runs), a bare ASGI app and aiohttp to
the upstream (the gateway's backend client): it reads the request, looks for a bearer token,
asks the upstream and answers, parsing every streamed event and writing it out again, as a relay
that counts what it relays must. No framework, authentication, limits, logs, metrics or store.
With ``--durable PATH`` it also commits the question and answer to a SQLite database there (WAL,
``synchronous=FULL``, as the gateway's store) before the answer's last byte, on the event loop
itself, which is the quickest way one request at a time: the least that keeping an acknowledged
answer through a crash costs.

What this adds over the mock is the stack's; what the gateway adds over this is its own. It is a
benchmark's yardstick, not a server for anyone's use.

    python -m lamplighter.overhead.floor --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
COMPACT = (",", ":")  # as the gateway and the mock write JSON


class Floor:
    """The ASGI app: ``POST /v1/chat/completions`` through to ``upstream``; ``GET /health``."""

    def __init__(self, upstream: str, durable: str | None) -> None:
        self.upstream = upstream.rstrip("/") + "/v1/chat/completions"
        self.durable = durable
        self.session: aiohttp.ClientSession | None = None
        self.db: sqlite3.Connection | None = None

    def _open(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        if self.durable:
            self.db = sqlite3.connect(self.durable, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS exchanges "
                "(id INTEGER PRIMARY KEY, question TEXT, answer TEXT, tokens INTEGER)"
            )

    def _keep(self, question: str, answer: str, tokens: int) -> None:
        if self.db is not None:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO exchanges (question, answer, tokens) VALUES (?, ?, ?)",
                (question, answer, tokens),
            )
            self.db.execute("COMMIT")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._open()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health":
            await _answer(send, 200, b"{}")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        authorization = dict(scope["headers"]).get(b"authorization", b"")
        if scope["path"] != "/v1/chat/completions" or not authorization.startswith(b"Bearer "):
            await _answer(send, 404 if authorization else 401, b'{"error": {}}')
            return
        request = json.loads(body)
        if request.get("stream"):  # its tokens counted by the upstream, as the gateway asks
            request["stream_options"] = {"include_usage": True}
        question = request["messages"][-1]["content"]
        assert self.session is not None
        async with self.session.post(self.upstream, json=request) as upstream:
            if not request.get("stream"):
                answer = await upstream.json()
                text = answer["choices"][0]["message"]["content"]
                self._keep(question, text, answer["usage"]["completion_tokens"])
                answer["created"] = int(time.time())
                await _answer(send, 200, json.dumps(answer, separators=COMPACT).encode())
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            pieces: list[str] = []
            tokens = 0  # from the usage event, as the gateway settles a stream
            async for line in upstream.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                for choice in event["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                out = b"data: " + json.dumps(event, separators=COMPACT).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": out, "more_body": True})
            self._keep(question, "".join(pieces), tokens)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL")
    parser.add_argument("--durable", help="commit each exchange to this SQLite database")
    args = parser.parse_args(argv)
    uvicorn.run(
        Floor(args.upstream, args.durable),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
