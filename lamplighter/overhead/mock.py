"""A fast mock of an OpenAI-compatible upstream, for measuring what sits in front of it.

``POST /v1/chat/completions`` answers with ``max_tokens`` chunks of one word each (``--chunks``
when the request names no limit), as one JSON body or as server-sent events (one HTTP chunk per
event, then a ``finish_reason`` event, a usage event when ``stream_options.include_usage`` asks
for it, and ``[DONE]``). ``GET /v1/models`` lists ``--model`` (any model asked for is answered);
``GET /health`` is 200. Everything else is 404.

It is an ``asyncio.Protocol`` on uvloop speaking just enough HTTP/1.1 (keep-alive, Content-Length
bodies), with every answer built once and kept, so that on one core it serves several thousand
requests a second: the figures of whatever is put in front of it are that thing's own.
Streamed events are written one by one, yielding to the event loop between them (or sleeping
``--chunk-delay-ms``), so a relay receives them as separate reads, as it would from a GPU server.

    python -m lamplighter.overhead.mock --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any, cast

# One word a token, in turn: a relay that takes a run of identical chunks for a model stuck in a
# loop (LiteLLM refuses more than 100) must not mistake the mock for one.
WORDS = (
    "the ", "lamp ", "was ", "lit ", "and ", "the ", "street ", "below ", "it ", "glowed ",
    "softly ", "while ", "people ", "walked ", "home ", "slowly ",
)  # fmt: skip
_REASONS = {200: b"OK", 404: b"Not Found", 400: b"Bad Request"}


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, _REASONS.get(status, b"Error"), content_type, len(body))
    ) + body


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(payload: dict[str, Any]) -> bytes:
    return _http_chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


class Answers:
    """Every answer as bytes ready to write, built on first use per (model, tokens)."""

    def __init__(self, models: tuple[str, ...], default_tokens: int) -> None:
        self.models = models
        self.default_tokens = default_tokens
        self._whole: dict[tuple[str, int, int], bytes] = {}
        self._streams: dict[tuple[str, int, bool], tuple[bytes, tuple[bytes, ...], bytes]] = {}
        listing = {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in models
            ],
        }
        self.models_response = _response(200, json.dumps(listing).encode())
        self.health_response = _response(200, b"ok", b"text/plain")
        self.not_found = _response(404, b'{"error":{"message":"not found"}}')
        self.bad_request = _response(400, b'{"error":{"message":"unreadable request"}}')

    def whole(self, model: str, tokens: int, prompt: int) -> bytes:
        key = (model, tokens, prompt)
        found = self._whole.get(key)
        if found is None:
            body = {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": _text(tokens)},
                        "finish_reason": "length",
                    }
                ],
                "usage": _usage(prompt, tokens),
            }
            found = self._whole[key] = _response(200, json.dumps(body).encode())
            _bound(self._whole)
        return found

    def stream(
        self, model: str, tokens: int, usage: bool
    ) -> tuple[bytes, tuple[bytes, ...], bytes]:
        """(head with the first event, the content events to take in turn, the tail); usage is
        a fixed count of one prompt token so that the tail can be prebuilt."""
        key = (model, tokens, usage)
        found = self._streams.get(key)
        if found is None:
            base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0}
            base["model"] = model

            def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                return {**base, "choices": [choice]}

            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            ) + _event(chunk({"role": "assistant", "content": ""}, None))
            content = tuple(_event(chunk({"content": word}, None)) for word in WORDS)
            tail = _event(chunk({}, "length"))
            if usage:
                tail += _event({**base, "choices": [], "usage": _usage(1, tokens)})
            tail += _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
            found = self._streams[key] = (head, content, tail)
            _bound(self._streams)
        return found


def _text(tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(tokens))


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _bound(table: dict[Any, Any]) -> None:
    if len(table) > 4096:
        table.clear()


class Connection(asyncio.Protocol):
    def __init__(self, answers: Answers, delay: float) -> None:
        self.answers = answers
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None
        self.writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.streaming is not None:
            self.streaming.cancel()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.streaming is None:
            self._serve()

    def _serve(self) -> None:
        """Answer every whole request in the buffer, in order; a streamed answer holds the
        rest until it is done."""
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, _, rest = head.partition(" ")
            path = rest.partition(" ")[0]
            if method == "POST" and path.endswith("/chat/completions"):
                if self._complete(body):
                    return
            elif method == "GET" and path.endswith("/models"):
                self.transport.write(self.answers.models_response)
            elif method == "GET" and path == "/health":
                self.transport.write(self.answers.health_response)
            else:
                self.transport.write(self.answers.not_found)

    def _complete(self, body: bytes) -> bool:
        """Answer one completion; True when it streams (and so holds the connection)."""
        assert self.transport is not None
        try:
            request = json.loads(body)
            model = str(request.get("model") or self.answers.models[0])
            limit = request.get("max_tokens") or request.get("max_completion_tokens")
            tokens = int(limit) if limit else self.answers.default_tokens
        except (ValueError, TypeError, AttributeError):
            self.transport.write(self.answers.bad_request)
            return False
        if not request.get("stream"):
            prompt = max(1, len(body) // 16)
            self.transport.write(self.answers.whole(model, tokens, prompt))
            return False
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self.streaming = asyncio.ensure_future(
            self._stream(*self.answers.stream(model, tokens, usage), tokens)
        )
        return True

    async def _stream(
        self, head: bytes, contents: tuple[bytes, ...], tail: bytes, tokens: int
    ) -> None:
        try:
            write = self.transport.write if self.transport is not None else None
            if write is None:
                return
            write(head)
            for i in range(tokens):
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)
                if self.writable is not None:
                    await self.writable
                if self.transport is None:
                    return
                write(contents[i % len(contents)])
            write(tail)
        finally:
            self.streaming = None
        if self.buffer:
            self._serve()


async def serve(
    host: str, port: int, models: tuple[str, ...], chunks: int, delay_ms: float
) -> None:
    answers = Answers(models, chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(answers, delay_ms / 1000), host, port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--model", action="append", help="model to list (repeat); mock-model")
    parser.add_argument("--chunks", type=int, default=16, help="tokens when none are asked for")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause before each")
    args = parser.parse_args(argv)
    models = tuple(args.model or ["mock-model"])
    work = serve(args.host, args.port, models, args.chunks, args.chunk_delay_ms)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
            asyncio.run(work)
        else:
            uvloop.run(work)


if __name__ == "__main__":
    main()
