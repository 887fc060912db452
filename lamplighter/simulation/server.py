"""sim-backend: the simulated GPU behind an OpenAI-compatible API, in real time.

It stands in for a vLLM server in load tests: ``POST /v1/chat/completions`` (streamed or not,
with ``stream_options.include_usage``), ``GET /v1/models``, ``GET /health`` and ``GET /metrics``
with vLLM's metric names. One :class:`~lamplighter.simulation.gpu.Engine` runs the requests; a
loop takes each step it schedules, sleeps for the step's simulated duration and hands the tokens
out, so the latencies a client sees are the timing model's (times ``time_scale``).

The answer is filler, one word a token. Its length is the request's ``max_tokens`` with
``ignore_eos`` (as in vLLM), else the ``sim_output_tokens`` extension field, else a length drawn
from a log-normal shaped like the Azure conversation trace (median 129 tokens), capped by
``max_tokens``. The prompt counts ``sim_prompt_tokens`` tokens if given, else about one token per
four characters of the messages. With ``--scheduling-policy priority`` a request's ``priority``
field orders the queue. The same seed and requests give the same answers.

A client that disconnects is aborted at once, waiting or running: the engine frees its slot and
KV cache and generates nothing more for it (``vllm:request_success_total`` does not count it and
``vllm:generation_tokens_total`` stops growing).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lamplighter.api.responses import serve_until_disconnect
from lamplighter.simulation.gpu import (
    H100,
    Engine,
    Request,
    SchedulingPolicy,
    Step,
    TimingModel,
)

WORDS = (
    "the", "lamp", "was", "lit", "and", "the", "street", "below", "it", "glowed", "softly",
    "while", "people", "walked", "home", "through", "quiet", "evening", "air", "talking",
    "about", "small", "things", "that", "mattered", "to", "them",
)  # fmt: skip
# The Azure conversation trace's generated tokens: median 129, p90 424 (sigma = ln(424/129)/1.28).
OUTPUT_MEDIAN = 129
OUTPUT_SIGMA = 0.93
OUTPUT_MAX = 1000


@dataclass(frozen=True)
class SimSettings:
    model: str = "sim-llama-3-8b-instruct"
    timing: TimingModel = H100
    seed: int = 0
    scheduling_policy: SchedulingPolicy = "fcfs"
    # Wall-clock seconds per simulated second: 0.1 runs ten times faster than the GPU would.
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass
class Generation:
    """One request on its way through the engine, as the HTTP side sees it."""

    request: Request
    words: int  # offset into WORDS
    max_tokens: int
    events: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)

    @property
    def finish_reason(self) -> str:
        return "length" if self.request.output_tokens >= self.max_tokens else "stop"

    def word(self, index: int) -> str:
        text = WORDS[(self.words + index) % len(WORDS)]
        return text if index == 0 else " " + text


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1


LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class SimBackend:
    """The engine and the loop that runs it in real time."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.engine = Engine(settings.timing, settings.scheduling_policy)
        self.generations: dict[int, Generation] = {}
        self.ids = itertools.count(1)
        self.rng = random.Random(settings.seed)
        self.finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.tpot = Histogram(TOKEN_BUCKETS)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._origin = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._origin = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def now(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self._origin) / self.settings.time_scale

    # -- requests --------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> Generation:
        prompt = _prompt_tokens(body)
        max_tokens = _max_tokens(body, self.settings.timing.max_model_len - prompt)
        seed = body.get("seed")
        rng = self.rng if seed is None else random.Random(f"{self.settings.seed}:{seed}:{prompt}")
        if body.get("ignore_eos"):
            natural = max_tokens
        elif isinstance(body.get("sim_output_tokens"), int) and body["sim_output_tokens"] > 0:
            natural = body["sim_output_tokens"]
        else:
            drawn = rng.lognormvariate(math.log(OUTPUT_MEDIAN), OUTPUT_SIGMA)
            natural = max(1, min(OUTPUT_MAX, round(drawn)))
        priority = body.get("priority", 0)
        if not isinstance(priority, int):
            raise BadRequest("priority must be an integer", "priority")
        request = Request(
            next(self.ids), prompt, min(natural, max_tokens), self.now(), priority=priority
        )
        problem = self.engine.fits(request.prompt_tokens, max_tokens)
        if problem is not None:
            raise BadRequest(problem, "messages", "context_length_exceeded")
        generation = Generation(request, rng.randrange(len(WORDS)), max_tokens)
        self.engine.add(request)
        self.generations[request.id] = generation
        self._wake.set()
        return generation

    def abort(self, generation: Generation) -> None:
        """The client left: stop the request wherever it is."""
        if self.generations.pop(generation.request.id, None) is None:
            return
        if self.engine.abort(generation.request.id) is not None:
            self.finished["abort"] += 1

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            batch = self.engine.schedule(self.now())
            if batch is None:
                self._wake.clear()
                continue
            await asyncio.sleep(max(0.0, batch.ends - self.now()) * self.settings.time_scale)
            self._deliver(self.engine.complete(batch))

    def _deliver(self, step: Step) -> None:
        now = step.batch.ends
        for request in step.emitted:
            generation = self.generations.get(request.id)
            if generation is not None:
                generation.events.put_nowait(request.generated)
        for request in step.first:
            self.ttft.observe(now - request.arrived)
        for request in step.finished:
            generation = self.generations.pop(request.id, None)
            if generation is None:
                continue
            generation.events.put_nowait(None)
            self.finished[generation.finish_reason] += 1
            self.e2e.observe(now - request.arrived)
            if request.generated > 1 and request.first_token_at is not None:
                self.tpot.observe((now - request.first_token_at) / (request.generated - 1))

    # -- metrics ---------------------------------------------------------------------------

    def metrics(self) -> str:
        """Prometheus text, with vLLM's metric names and its ``model_name`` label."""
        engine, counters = self.engine, self.engine.counters
        out = _Exposition(f'model_name="{self.settings.model}"')
        out.gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            engine.num_running,
        )
        out.gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            engine.num_waiting,
        )
        usage = round(engine.kv_usage, 6)
        out.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        out.gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (vLLM V0's name).", usage)
        out.counter(
            "vllm:num_preemptions_total",
            "Cumulative number of preemptions from the engine.",
            counters.preemptions,
        )
        out.counter(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            counters.prompt_tokens,
        )
        out.counter(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            counters.generation_tokens,
        )
        out.counter(
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            *(
                (f'finished_reason="{reason}"', count)
                for reason, count in self.finished.items()
                if reason != "abort"
            ),
        )
        out.histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token.", self.ttft
        )
        out.histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of end to end latency.", self.e2e
        )
        out.histogram(
            "vllm:time_per_output_token_seconds", "Histogram of time per output token.", self.tpot
        )
        return out.text()


class _Exposition:
    """Prometheus text format 0.0.4, written by hand (no client library needed)."""

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.lines: list[str] = []

    def _family(self, name: str, kind: str, help_: str) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]

    def _sample(self, name: str, value: float, extra: str = "") -> None:
        labels = f"{self.labels},{extra}" if extra else self.labels
        self.lines.append(f"{name}{{{labels}}} {value}")

    def gauge(self, name: str, help_: str, value: float) -> None:
        self._family(name, "gauge", help_)
        self._sample(name, value)

    def counter(self, name: str, help_: str, *values: float | tuple[str, float]) -> None:
        self._family(name, "counter", help_)
        for value in values:
            if isinstance(value, tuple):
                self._sample(name, value[1], value[0])
            else:
                self._sample(name, value)

    def histogram(self, name: str, help_: str, histogram: Histogram) -> None:
        self._family(name, "histogram", help_)
        for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
            self._sample(f"{name}_bucket", count, f'le="{bound}"')
        self._sample(f"{name}_bucket", histogram.count, 'le="+Inf"')
        self._sample(f"{name}_sum", round(histogram.total, 6))
        self._sample(f"{name}_count", histogram.count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _prompt_tokens(body: dict[str, Any]) -> int:
    given = body.get("sim_prompt_tokens")
    if given is not None:
        if not isinstance(given, int) or given < 1:
            raise BadRequest("sim_prompt_tokens must be a positive integer", "sim_prompt_tokens")
        return given
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    characters = 0
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", "messages")
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        characters += len(str(content))
    # About four characters a token, plus a few tokens of chat template per message.
    return max(1, math.ceil(characters / 4) + 4 * len(messages))


def _max_tokens(body: dict[str, Any], room: int) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return max(1, room)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    return value


# -- HTTP ----------------------------------------------------------------------------------------


class Watched(Response):
    """A response that runs ``produce`` while watching for the client to disconnect; if it
    does, ``produce`` is cancelled and ``on_disconnect`` runs (vLLM aborts the request)."""

    def __init__(
        self,
        produce: Callable[[Send], Awaitable[None]],
        on_disconnect: Callable[[], None],
    ) -> None:
        super().__init__()
        self.produce = produce
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        try:
            finished = await serve_until_disconnect(self.produce(send), receive)
        finally:
            if not finished:
                self.on_disconnect()


def create_app(settings: SimSettings | None = None) -> Starlette:
    settings = settings or SimSettings()
    backend = SimBackend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    async def health(_: HTTPRequest) -> Response:
        return Response(status_code=200)

    async def models(_: HTTPRequest) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": settings.model,
                        "object": "model",
                        "created": 0,
                        "owned_by": "lamplighter-sim",
                        "max_model_len": settings.timing.max_model_len,
                    }
                ],
            }
        )

    async def metrics(_: HTTPRequest) -> Response:
        return PlainTextResponse(backend.metrics(), media_type="text/plain; version=0.0.4")

    async def chat(http: HTTPRequest) -> Response:
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(BadRequest("the body must be JSON"))
        if not isinstance(body, dict):
            return _error(BadRequest("the body must be a JSON object"))
        if body.get("model") not in (None, settings.model):
            return _error(
                BadRequest(f"The model `{body.get('model')}` does not exist.", "model"), 404
            )
        if body.get("n", 1) != 1:
            return _error(BadRequest("only n=1 is supported", "n"))
        try:
            generation = backend.submit(body)
        except BadRequest as exc:
            return _error(exc)
        identity = {
            "id": f"chatcmpl-sim-{generation.request.id}",
            "created": int(time.time()),
            "model": settings.model,
        }
        options = body.get("stream_options") or {}
        usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        produce = (
            _stream(generation, identity, usage)
            if body.get("stream")
            else _whole(generation, identity)
        )
        return Watched(produce, lambda: backend.abort(generation))

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/metrics", metrics),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _usage(generation: Generation) -> dict[str, int]:
    prompt, completion = generation.request.prompt_tokens, generation.request.generated
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stream(
    generation: Generation, identity: dict[str, Any], usage: bool
) -> Callable[[Send], Awaitable[None]]:
    async def produce(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        async def event(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
            body = f"data: {text}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                **identity,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if usage:
                data["usage"] = None
            return data

        await event(chunk({"role": "assistant", "content": ""}))
        while True:
            produced = await generation.events.get()
            if produced is None:
                break
            await event(chunk({"content": generation.word(produced - 1)}))
        await event(chunk({}, generation.finish_reason))
        if usage:
            await event(
                {
                    **identity,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage(generation),
                }
            )
        await event("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return produce


def _whole(generation: Generation, identity: dict[str, Any]) -> Callable[[Send], Awaitable[None]]:
    async def produce(send: Send) -> None:
        words = []
        while (produced := await generation.events.get()) is not None:
            words.append(generation.word(produced - 1))
        body = json.dumps(
            {
                **identity,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "logprobs": None,
                        "finish_reason": generation.finish_reason,
                    }
                ],
                "usage": _usage(generation),
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return produce


def _error(exc: BadRequest, status: int = 400) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}},
        status_code=status,
    )


def serve(settings: SimSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run sim-backend under uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
