"""The load generator every target shares, in a process of its own.

``concurrency`` workers, each with one keep-alive HTTP/1.1 connection, send chat completions
back to back for ``warmup + duration`` seconds. Each request asks a question of its own (a
running number spelt in letters), as distinct conversations would. Only requests that *finish*
inside the measured window count; latency is from writing the request to the last byte, and
for streams also to the first content event. The client is raw asyncio on uvloop, so that on
one core it outpaces any Python server put in front of it.

It reads its spec as one JSON object on standard input and talks on standard output: the line
``measuring`` when the measured window opens, ``stopped`` when it closes (the parent reads the
servers' CPU counters at those two moments), then the result as one JSON line.

    echo '{"port": 9100, "concurrency": 8, "duration": 5}' | python -m lamplighter.overhead.load
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

DRAIN_SECONDS = 30.0  # requests still running when the window closes get this long to end


@dataclass(frozen=True)
class Spec:
    port: int
    host: str = "127.0.0.1"
    path: str = "/v1/chat/completions"
    api_key: str = ""
    model: str = "mock-model"
    concurrency: int = 1
    warmup: float = 1.0
    duration: float = 5.0
    stream: bool = False
    chunks: int = 16
    extra: dict[str, Any] = field(default_factory=dict)  # more fields for the request body

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Spec:
        return cls(**raw)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, requests that ended in window
    first: list[float] = field(default_factory=list)  # seconds to the first content event
    chunks: int = 0  # content events received in window
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    sample_error: str = ""


class Client:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.counter = 0
        head = f"POST {spec.path} HTTP/1.1\r\nhost: {spec.host}:{spec.port}\r\n"
        if spec.api_key:
            head += f"authorization: Bearer {spec.api_key}\r\n"
        self.head = (head + "content-type: application/json\r\n").encode()
        body = {
            "model": spec.model,
            "messages": [{"role": "user", "content": "QUESTION"}],
            "max_tokens": spec.chunks,
            "stream": spec.stream,
        }
        if spec.stream:
            body["stream_options"] = {"include_usage": True}
        body.update(spec.extra)
        before, _, after = json.dumps(body, separators=(",", ":")).partition("QUESTION")
        self.before, self.after = before.encode(), after.encode()

    def request(self) -> bytes:
        self.counter += 1
        body = b"%sQuestion %s: what does a lamplighter do?%s" % (
            self.before,
            _word(self.counter),
            self.after,
        )
        return self.head + b"content-length: %d\r\n\r\n" % len(body) + body


def _word(number: int) -> bytes:
    """A word of its own for each number: gateways that watch for floods of one prompt
    ignore digits, and these questions are meant to be different."""
    letters = []
    while True:
        number, digit = divmod(number, 26)
        letters.append(97 + digit)
        if not number:
            return bytes(letters)


async def _read_body(
    reader: asyncio.StreamReader, headers: bytes
) -> tuple[bytes, float | None, int]:
    """The body, when its first content event came, and how many content events it held."""
    lower = headers.lower()
    first: float | None = None
    if b"transfer-encoding: chunked" in lower:
        parts = []
        events = 0
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            found = data.count(b'"content":"') - data.count(b'"content":""')
            if found and first is None:
                first = time.perf_counter()
            events += found
            parts.append(data)
        return b"".join(parts), first, events
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        return await reader.read(), None, 0
    length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
    return await reader.readexactly(length), None, 0


async def _worker(client: Client, window: list[float], tally: Tally, stop: asyncio.Event) -> None:
    spec = client.spec
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while not stop.is_set():
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
            started = time.perf_counter()
            writer.write(client.request())
            head = await reader.readuntil(b"\r\n\r\n")
            body, first, events = await _read_body(reader, head)
            ended = time.perf_counter()
            status = head[9:12].decode()
            inside = window[0] <= ended <= window[1]
            if status != "200" or (spec.stream and b'data: {"error"' in body):
                if inside:
                    tally.errors += 1
                    tally.statuses[status] = tally.statuses.get(status, 0) + 1
                    tally.sample_error = tally.sample_error or body[:300].decode("utf-8", "replace")
                await asyncio.sleep(0.01)
                continue
            if b"connection: close" in head.lower():
                writer.close()
                reader = writer = None
            if inside:
                tally.latencies.append(ended - started)
                if first is not None:
                    tally.first.append(first - started)
                tally.chunks += events if spec.stream else spec.chunks
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            now = time.perf_counter()
            if window[0] <= now <= window[1]:
                tally.errors += 1
                tally.statuses["io"] = tally.statuses.get("io", 0) + 1
                tally.sample_error = tally.sample_error or repr(exc)
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (0 < share <= 1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def run(spec: Spec, say: Any = print) -> dict[str, Any]:
    """Drive the load; ``say`` hears ``measuring`` and ``stopped`` as the window opens and
    closes."""
    client = Client(spec)
    tally = Tally()
    now = time.perf_counter()
    window = [now + spec.warmup, now + spec.warmup + spec.duration]
    stop = asyncio.Event()
    workers = [
        asyncio.ensure_future(_worker(client, window, tally, stop)) for _ in range(spec.concurrency)
    ]
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    say("measuring")
    cpu_measure = time.process_time()
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    say("stopped")
    cpu_after = time.process_time()
    stop.set()
    _, pending = await asyncio.wait(workers, timeout=DRAIN_SECONDS)
    for task in pending:
        task.cancel()
    done = len(tally.latencies)
    return {
        "requests": done,
        "errors": tally.errors,
        "statuses": tally.statuses,
        "sample_error": tally.sample_error,
        "seconds": spec.duration,
        "requests_per_s": round(done / spec.duration, 2),
        "latency_ms": {
            "p50": _ms(percentile(tally.latencies, 0.50)),
            "p90": _ms(percentile(tally.latencies, 0.90)),
            "p99": _ms(percentile(tally.latencies, 0.99)),
            "mean": _ms(sum(tally.latencies) / done if done else None),
        },
        "first_chunk_ms": {
            "p50": _ms(percentile(tally.first, 0.50)),
            "p99": _ms(percentile(tally.first, 0.99)),
        },
        "chunks": tally.chunks,
        "chunks_per_request": round(tally.chunks / done, 2) if done else None,
        "client_cores": round((cpu_after - cpu_measure) / spec.duration, 3),
    }


def main() -> None:
    spec = Spec.parse(json.loads(sys.stdin.readline()))

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        import uvloop

        result = uvloop.run(run(spec, say))
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        result = asyncio.run(run(spec, say))
    say(json.dumps(result))


if __name__ == "__main__":
    main()
