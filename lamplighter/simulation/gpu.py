"""A simulated GPU serving engine: vLLM's continuous batching as a pure function of virtual time.

The engine keeps vLLM's shape. Requests wait in one FIFO queue; each engine step builds a batch
under a token budget (``max_batched_tokens``) and a sequence cap (``max_num_seqs``), runs it, and
every sequence in it advances: a sequence in its decode phase produces one token, a sequence in
its prefill phase processes a chunk of its prompt and produces its first token with the step that
finishes the prompt. The batch is built stall-free, as Sarathi-Serve does and vLLM's chunked
prefill scheduler does by default: running decodes first (one token each), then the unfinished
prefill chunks of running requests, then new requests from the head of the queue while the
budget, the sequence cap and the KV cache allow. The KV cache is counted in blocks of
``block_size`` tokens; a request that cannot get a block for its next token preempts the newest
running request, which frees its blocks and goes back to the front of the queue to be recomputed
(vLLM's recompute preemption). New requests are not admitted in a step that preempted, and only
while a 1% watermark of blocks stays free.

The queue is first come, first served by default. With ``scheduling_policy="priority"`` (vLLM's
``--scheduling-policy priority``, where each request carries a ``priority``, lower first) the
queue and the prefill chunks are ordered by (priority, arrival) and preemption takes the worst
request instead of the newest.

How long a step takes is :meth:`TimingModel.step_time`: a fixed cost, plus a cost per token in
the batch, plus a cost per token of KV cache its attention reads. ``docs/simulation.md`` derives
the defaults and cites the measurements behind them.

Everything here is pure: time is an argument, there is no I/O, no asyncio and no sleeping. The
surge benchmark drives the engine in virtual time; ``server.py`` drives the same engine in real
time behind an OpenAI-compatible API. An engine step is two calls, :meth:`Engine.schedule` (decide
the batch and its duration) and :meth:`Engine.complete` (apply its results when it ends), so that
a request aborted while its step runs produces nothing more, as in vLLM.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

SchedulingPolicy = Literal["fcfs", "priority"]


@dataclass(frozen=True)
class TimingModel:
    """What one GPU serving one model can do, and the limits vLLM would run it with."""

    name: str
    # Seconds every step costs whatever its size: reading the weights once, kernel launches,
    # scheduling and sampling.
    step_overhead_s: float
    # Seconds per token in the batch (a prompt token in a prefill chunk or a decoded token).
    per_token_s: float
    # Seconds per token of KV cache that the step's attention reads.
    per_context_token_s: float
    # KV cache room, in tokens, left after the weights and activations.
    kv_cache_tokens: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_batched_tokens: int = 2048
    max_model_len: int = 16_384
    # Fraction of KV blocks kept free when admitting a new request (vLLM's watermark).
    watermark: float = 0.01

    def __post_init__(self) -> None:
        if min(self.step_overhead_s, self.per_token_s, self.per_context_token_s) < 0:
            raise ValueError("timing costs must be non-negative")
        if self.step_overhead_s + self.per_token_s <= 0:
            raise ValueError("a step must take some time")
        if min(self.block_size, self.max_num_seqs, self.max_batched_tokens) < 1:
            raise ValueError("block_size, max_num_seqs and max_batched_tokens must be >= 1")
        if self.kv_cache_tokens < self.block_size or self.max_model_len < 2:
            raise ValueError("the KV cache must hold a block and the model two tokens")

    @property
    def kv_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size

    def step_time(self, batch_tokens: int, context_tokens: int) -> float:
        """Seconds one engine step takes for ``batch_tokens`` tokens reading ``context_tokens``
        tokens of KV cache."""
        return (
            self.step_overhead_s
            + self.per_token_s * batch_tokens
            + self.per_context_token_s * context_tokens
        )


# Llama-3-8B-Instruct (the architecture Llama-3.1-8B shares: 32 layers, 8 KV heads of 128, so
# 128 KiB of BF16 KV cache a token) served by vLLM 0.6 on one GPU. See docs/simulation.md.
H100 = TimingModel(
    name="llama-3-8b-instruct/h100-sxm-80gb/bf16",
    step_overhead_s=7.0e-3,
    per_token_s=40e-6,
    per_context_token_s=131_072 / 3.35e12,
    kv_cache_tokens=440_000,
)
A100 = TimingModel(
    name="llama-3-8b-instruct/a100-sxm-80gb/bf16",
    step_overhead_s=11.2e-3,
    per_token_s=84e-6,
    per_context_token_s=131_072 / 2.039e12,
    kv_cache_tokens=440_000,
)
PROFILES: dict[str, TimingModel] = {"h100": H100, "a100": A100}


@dataclass(eq=False)
class Request:
    """One request inside the engine. ``output_tokens`` is how many tokens it will generate
    before it stops (its end-of-turn token or its max_tokens, whichever comes first)."""

    id: int
    prompt_tokens: int
    output_tokens: int
    arrived: float = 0.0
    computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0
    blocks: int = 0
    first_token_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0
    aborted: bool = False
    priority: int = 0  # used by the "priority" scheduling policy only; lower goes first
    order: int = field(default=-1, repr=False)  # arrival order in the engine

    @property
    def pending(self) -> int:
        """Tokens to process before the next token comes out: the prompt (and, after a
        preemption, what was generated) during prefill; the last token during decode."""
        return self.prompt_tokens + self.generated - self.computed

    @property
    def done(self) -> bool:
        return self.aborted or self.finished_at is not None


@dataclass(frozen=True)
class Batch:
    """What one step runs: each request with the number of tokens it processes."""

    started: float
    duration: float
    items: tuple[tuple[Request, int], ...]
    context_tokens: int

    @property
    def ends(self) -> float:
        return self.started + self.duration

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.items)


@dataclass(frozen=True)
class Step:
    """What came out of a step when it ended."""

    batch: Batch
    emitted: tuple[Request, ...]  # produced one token each
    first: tuple[Request, ...]  # of those, the ones whose first token it was
    finished: tuple[Request, ...]


@dataclass
class Counters:
    """Running totals, named after the vLLM metrics they feed."""

    prompt_tokens: int = 0  # prefill tokens computed (recomputation included)
    generation_tokens: int = 0
    preemptions: int = 0
    finished: int = 0
    aborted: int = 0
    steps: int = 0
    busy_s: float = 0.0


class Engine:
    """Continuous batching over one simulated GPU. See the module docstring for the rules."""

    def __init__(self, model: TimingModel, scheduling_policy: SchedulingPolicy = "fcfs") -> None:
        if scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy is 'fcfs' or 'priority'")
        self.model = model
        self.policy: SchedulingPolicy = scheduling_policy
        self.free_blocks = model.kv_blocks
        self.running: list[Request] = []
        # A heap by (priority, arrival) under "priority", by arrival under "fcfs".
        self.waiting: list[tuple[int, int, Request]] = []
        self._orders = itertools.count()
        self.counters = Counters()
        self._live: dict[int, Request] = {}
        self._waiting = 0  # live requests in ``waiting`` (aborted ones are dropped lazily)
        self._batch: Batch | None = None
        self._preempted: set[int] = set()  # in the step being scheduled
        self._watermark = math.ceil(model.watermark * model.kv_blocks)

    # -- requests --------------------------------------------------------------------------

    def fits(self, prompt_tokens: int, output_tokens: int) -> str | None:
        """Why a request of this shape can never run here, or None if it can."""
        if prompt_tokens < 1 or output_tokens < 1:
            return "a request needs at least one prompt token and one output token"
        if prompt_tokens + output_tokens > self.model.max_model_len:
            return (
                f"this model's maximum context length is {self.model.max_model_len} tokens, "
                f"but {prompt_tokens + output_tokens} were requested ({prompt_tokens} in the "
                f"prompt, {output_tokens} in the completion)"
            )
        if self._blocks(prompt_tokens + output_tokens) > self.model.kv_blocks:
            return "the request does not fit in the KV cache"
        return None

    def add(self, request: Request) -> None:
        """Queue a request (it joins the batch at a later step)."""
        problem = self.fits(request.prompt_tokens, request.output_tokens)
        if problem is not None:
            raise ValueError(problem)
        if request.id in self._live:
            raise ValueError(f"request {request.id} is already in the engine")
        self._live[request.id] = request
        request.order = next(self._orders)
        self._enqueue(request)

    def abort(self, request_id: int) -> Request | None:
        """Stop a request now: it leaves the queue or the batch and frees its KV cache. A step
        already running for it completes, but produces nothing more for it."""
        request = self._live.pop(request_id, None)
        if request is None:
            return None
        request.aborted = True
        self.counters.aborted += 1
        if request in self.running:
            self.running.remove(request)
            self._free(request)
        else:
            self._waiting -= 1
        return request

    def get(self, request_id: int) -> Request | None:
        return self._live.get(request_id)

    # -- state -----------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return self._waiting

    @property
    def has_work(self) -> bool:
        return bool(self.running) or self._waiting > 0

    @property
    def busy(self) -> bool:
        """A step is in flight."""
        return self._batch is not None

    @property
    def kv_used_blocks(self) -> int:
        return self.model.kv_blocks - self.free_blocks

    @property
    def kv_usage(self) -> float:
        return self.kv_used_blocks / self.model.kv_blocks

    # -- steps -----------------------------------------------------------------------------

    def schedule(self, now: float) -> Batch | None:
        """Build the next batch at ``now`` (None when there is nothing to run)."""
        if self._batch is not None:
            raise RuntimeError("a step is already running; complete() it first")
        if not self.has_work:
            return None
        model = self.model
        budget = model.max_batched_tokens
        items: list[tuple[Request, int]] = []
        prefills: list[Request] = []
        self._preempted.clear()
        # Decodes first, one token each: a prompt never stalls the streams already flowing.
        for request in list(self.running):
            if budget <= 0:
                break
            if request.id in self._preempted:
                continue
            if request.pending != 1 or request.generated == 0:
                prefills.append(request)
            elif self._reserve(request, 1):
                items.append((request, 1))
                budget -= 1
        # Then the prompts already under way, in arrival (or priority) order.
        if self.policy == "priority":
            prefills.sort(key=self._rank)
        for request in prefills:
            if budget <= 0:
                break
            if request.id in self._preempted:
                continue
            n = min(request.pending, budget)
            if self._reserve(request, n):
                items.append((request, n))
                budget -= n
        preempted = bool(self._preempted)
        if preempted:  # a victim may have been given tokens earlier in this step
            items = [(r, n) for r, n in items if r.id not in self._preempted]
            budget = model.max_batched_tokens - sum(n for _, n in items)
        # Then new requests from the head of the queue, unless this step had to preempt.
        if not preempted:
            while budget > 0 and len(self.running) < model.max_num_seqs and self.waiting:
                request = self.waiting[0][2]
                if request.aborted:
                    heapq.heappop(self.waiting)
                    continue
                n = min(request.pending, budget)
                need = self._blocks(request.computed + n) - request.blocks
                if need + self._watermark > self.free_blocks:
                    break
                heapq.heappop(self.waiting)
                self._waiting -= 1
                self.running.append(request)
                self.free_blocks -= need
                request.blocks += need
                items.append((request, n))
                budget -= n
        if not items:
            return None
        tokens = model.max_batched_tokens - budget
        context = sum(request.computed + n for request, n in items)
        self._batch = Batch(now, model.step_time(tokens, context), tuple(items), context)
        return self._batch

    def complete(self, batch: Batch) -> Step:
        """Apply the results of ``batch`` (at ``batch.ends``)."""
        if batch is not self._batch:
            raise RuntimeError("complete() takes the batch schedule() returned")
        self._batch = None
        end = batch.ends
        emitted: list[Request] = []
        first: list[Request] = []
        finished: list[Request] = []
        counters = self.counters
        counters.steps += 1
        counters.busy_s += batch.duration
        for request, n in batch.items:
            if request.aborted:
                continue
            if request.generated == 0 or request.pending > 1:
                counters.prompt_tokens += n
            request.computed += n
            if request.computed != request.prompt_tokens + request.generated:
                continue  # a prefill chunk that did not finish the prompt
            request.generated += 1
            emitted.append(request)
            if request.first_token_at is None:
                request.first_token_at = end
                first.append(request)
            if request.generated >= request.output_tokens:
                request.finished_at = end
                finished.append(request)
        counters.generation_tokens += len(emitted)
        if finished:
            done = {id(request) for request in finished}
            self.running = [r for r in self.running if id(r) not in done]
            for request in finished:
                self._free(request)
                del self._live[request.id]
            counters.finished += len(finished)
        return Step(batch, tuple(emitted), tuple(first), tuple(finished))

    def step(self, now: float) -> Step | None:
        """Schedule and complete one step at once (for callers that never abort mid-step)."""
        batch = self.schedule(now)
        return None if batch is None else self.complete(batch)

    # -- KV cache --------------------------------------------------------------------------

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.model.block_size)

    def _reserve(self, request: Request, n: int) -> bool:
        """Find blocks for ``n`` more tokens of a running request, preempting the newest (or,
        by priority, the worst) running requests while there are not enough. False if the
        request itself had to be preempted."""
        need = self._blocks(request.computed + n) - request.blocks
        while need > self.free_blocks:
            if self.policy == "priority":
                victim = max(self.running, key=self._rank)
                self.running.remove(victim)
            else:
                victim = self.running.pop()
            self._preempt(victim)
            if victim is request:
                return False
        self.free_blocks -= need
        request.blocks += need
        return True

    def _preempt(self, request: Request) -> None:
        self._preempted.add(request.id)
        self._free(request)
        request.computed = 0
        request.preemptions += 1
        self.counters.preemptions += 1
        self._enqueue(request)  # keeps its arrival order: back near the front

    def _enqueue(self, request: Request) -> None:
        rank = request.priority if self.policy == "priority" else 0
        heapq.heappush(self.waiting, (rank, request.order, request))
        self._waiting += 1

    @staticmethod
    def _rank(request: Request) -> tuple[int, int]:
        return (request.priority, request.order)

    def _free(self, request: Request) -> None:
        self.free_blocks += request.blocks
        request.blocks = 0


# -- measuring the engine ----------------------------------------------------------------------


@dataclass(frozen=True)
class Saturation:
    """The engine measured in a closed loop: ``concurrency`` requests always in it."""

    concurrency: int
    throughput_tokens_per_s: float  # output tokens per second
    ttft_p50_s: float
    ttft_p99_s: float
    step_mean_s: float
    requests: int


def saturate(
    model: TimingModel,
    shapes: Sequence[tuple[int, int]],
    concurrency: int,
    *,
    warmup: float = 0.2,
) -> Saturation:
    """Run ``shapes`` (prompt, output tokens) through the engine in a closed loop: ``concurrency``
    requests start at once and each one that ends is replaced by the next, the way an admission
    pool with ``concurrency`` slots feeds a backend under overload. The measurement runs from the
    moment the first ``warmup`` share of requests has been admitted (the batch has filled) until
    the feed runs out (from then on the batch drains below ``concurrency``)."""
    if concurrency < 1 or not shapes:
        raise ValueError("saturate() needs a concurrency of at least 1 and some requests")
    engine = Engine(model)
    skip = int(len(shapes) * warmup)
    admitted = 0
    now = 0.0
    began: float | None = None
    tokens = 0
    ttfts: list[float] = []
    steps: list[float] = []
    while admitted < len(shapes):
        while engine.num_running + engine.num_waiting < concurrency and admitted < len(shapes):
            prompt, output = shapes[admitted]
            engine.add(Request(admitted, prompt, output, arrived=now))
            admitted += 1
        if began is None and admitted > skip:
            began = now
        step = engine.step(now)
        if step is None:
            break
        now = step.batch.ends
        if began is not None:
            tokens += len(step.emitted)
            steps.append(step.batch.duration)
        ttfts.extend(now - request.arrived for request in step.first if request.id >= skip)
    if began is None or now <= began or not ttfts:
        raise ValueError("too few requests to measure the engine at this concurrency")
    ttfts.sort()
    return Saturation(
        concurrency=concurrency,
        throughput_tokens_per_s=tokens / (now - began),
        ttft_p50_s=percentile(ttfts, 0.50),
        ttft_p99_s=percentile(ttfts, 0.99),
        step_mean_s=sum(steps) / len(steps),
        requests=len(shapes),
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile of an already sorted sequence."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def largest_concurrency(
    model: TimingModel,
    shapes: Sequence[tuple[int, int]],
    ttft_budget_s: float,
    candidates: Iterable[int] | None = None,
) -> Saturation:
    """The largest concurrency (at most ``max_num_seqs``) at which the engine, kept full, still
    gives 99% of requests their first token within ``ttft_budget_s``; the smallest candidate if
    none does."""
    options = sorted(
        {c for c in (candidates or _CANDIDATES) if 1 <= c <= model.max_num_seqs}
        | {model.max_num_seqs},
        reverse=True,
    )
    measured = saturate(model, shapes, options[0])
    for concurrency in options[1:]:
        if measured.ttft_p99_s <= ttft_budget_s:
            break
        measured = saturate(model, shapes, concurrency)
    return measured


_CANDIDATES = (256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1)


def profile(name: str, **overrides: int | float | None) -> TimingModel:
    """A named timing model (``h100``, ``a100``) with some fields replaced (None keeps one)."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(PROFILES)}") from None
    changes: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    return replace(base, **changes)
