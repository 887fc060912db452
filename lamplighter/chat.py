"""One chat exchange, from a validated request to a durable answer and a usage record.

``ChatService.open`` applies the caller's plan (allowed models, the cap on max_tokens), counts the
prompt, reserves the plan's rate limits, waits for a slot on the backend (admission control), and
only then threads the request's messages into the user's conversation tree and creates
the assistant message (status ``in_progress``) before any token is generated; ``Exchange.stream``
relays the backend's chunks, saves the partial answer in the background about once a second, and
makes the answer and its usage durable *before* it releases the final chunk. If the stream is
closed or cancelled early (the client went away), the answer is saved as ``cut`` with the tokens
actually generated, and those tokens are settled in the usage ledger. However the exchange ends,
the unused part of the rate-limit reservation is given back and the backend slot is freed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from opentelemetry.trace import (
    INVALID_SPAN,
    NoOpTracer,
    Span,
    Status,
    StatusCode,
    Tracer,
    use_span,
)
from sqlalchemy.ext.asyncio import AsyncSession

from lamplighter.abuse.moderation import ContentBlocked, Moderation
from lamplighter.conversation.threading import (
    ROOT_HASH,
    Turn,
    node_hash,
    path_hashes,
    stored_prefix,
    title_from,
)
from lamplighter.engines.base import (
    Backend,
    Chunk,
    GenerationRequest,
    PreparedRequest,
    ToolCalls,
)
from lamplighter.engines.router import Route, Router, Unavailable, accepting, load_of
from lamplighter.exceptions import (
    APIError,
    ContextLengthExceeded,
    EngineFailed,
    NotFound,
    Overloaded,
    RateLimited,
    ShuttingDown,
)
from lamplighter.store.audit import Audit
from lamplighter.store.conversations import Conversations
from lamplighter.store.database import Database
from lamplighter.store.models import new_id, utcnow
from lamplighter.store.usage import UsageLedger
from lamplighter.store.writer import Writer
from lamplighter.telemetry.metrics import Metrics
from lamplighter.traffic.admission import Admission, BackendLost, Slot
from lamplighter.traffic.cache import CachedAnswer, ResponseCache, cache_key
from lamplighter.traffic.degrade import Degradation, DegradeRule, degradation
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import Plan
from lamplighter.traffic.ratelimits import RateLimiter, Reservation

CHECKPOINT_SECONDS = 1.0
# A web chat's answer whose page went away (a reload, a closed tab, a dropped connection) goes
# on being written this long, and LINGER_WATCHED_S past each time a page reads its chat again
# (a reloaded page polls an answer still being written, at most every 30 s); an answer nobody
# comes back for is cut then, so the backend's time goes to people who wait.
LINGER_S = 10.0
LINGER_WATCHED_S = 40.0
# When a conversation is too long for the model, its oldest turns are left out until an answer
# has at least this much room (or the plan's cap, if smaller).
FIT_ANSWER_TOKENS = 256


@dataclass(frozen=True)
class Principal:
    """Who is asking: resolved from an API key (or, later, a session cookie)."""

    user_id: uuid.UUID
    email: str
    plan: str
    is_admin: bool
    api_key_id: uuid.UUID | None = None
    # What the credential may do: a key's scopes; a browser session may do everything.
    scopes: frozenset[str] = frozenset({"chat", "feedback", "admin"})

    def audit(self, action: str, target: str, details: Mapping[str, Any] | None = None) -> Audit:
        """An audit-log entry of an action this caller took."""
        return Audit(self.user_id, self.email, action, target, details or {})


@dataclass(frozen=True)
class Placement:
    """Where an exchange goes in the tree when the caller says so (the web chat), instead of
    being found from the request's messages (the stateless API).

    ``parent_id`` is the node the new turn hangs under (None: a conversation's first turn).
    With ``new_turn`` the request's last message is stored as a new child of the parent and the
    answer goes under it (a new message, or an edit when the parent already has children);
    without, the parent is the question and the answer is a new child of it (a regeneration).
    The caller has checked that the conversation and the parent are the user's.

    With ``fit`` (the web chat, which sends whole conversations), the oldest turns are left
    out until the prompt fits the model; without, a prompt too long is refused (the Responses
    API, whose ``truncation`` is "disabled"). ``earlier`` new turns before the last one (the
    Responses API's input of several messages) are stored too, in order, between the parent
    and the question.

    A Responses API request that continues an answer (``previous_response_id``) names it as
    ``continues``, and its ``instructions`` are stored with its answer: the model saw those, not
    the system message the conversation starts with.
    """

    conversation_id: uuid.UUID | None
    parent_id: uuid.UUID | None
    new_turn: bool
    fit: bool = True
    earlier: int = 0
    continues: uuid.UUID | None = None
    instructions: str | None = None


@dataclass(frozen=True)
class TokenCount:
    prompt_tokens: int
    completion_tokens: int
    # Of the prompt, the tokens nobody computed again: found in the backend's prefix cache, or
    # all of them when the response cache answered.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai(self) -> dict[str, Any]:
        """Chat completions' ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def completion_id(message_id: uuid.UUID) -> str:
    return f"chatcmpl-{message_id.hex}"


def response_id(message_id: uuid.UUID) -> str:
    """The Responses API's name for a stored answer (the one its completion id names)."""
    return f"resp_{message_id.hex}"


def message_id_from(name: str) -> uuid.UUID | None:
    """The stored message a completion or response id names (``chatcmpl-<hex>``,
    ``resp_<hex>`` or a bare UUID)."""
    for prefix in ("chatcmpl-", "resp_"):
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
            break
    try:
        return uuid.UUID(name)
    except ValueError:
        return None


@dataclass(eq=False)
class Exchange:
    service: ChatService
    principal: Principal
    # Where the chunks come from: a backend's generate, or a cached answer's replay.
    source: Callable[[PreparedRequest], AsyncIterator[Chunk]]
    prepared: PreparedRequest
    plan: Plan
    reservation: Reservation
    slot: Slot | None  # None for a cache hit, which takes no backend capacity
    message_id: uuid.UUID
    stored: bool
    # The client sees the answer only once it is whole (not streamed): until then, a backend
    # that fails part-way can be replaced by another that answers from the beginning.
    whole: bool = False
    cache_key: str | None = None
    degraded: Degradation | None = None
    # Moderation: the plan's action, and what was flagged in the question and in the answer.
    moderation: str = "off"
    flags_in: tuple[str, ...] = ()
    flags_out: tuple[str, ...] = ()
    metadata: dict[str, str] | None = None  # the API client's, stored with the answer
    usage_id: int | None = None  # the ledger row, written at open and completed at settle
    # The write that stores the question and opens the ledger row, when ``open`` did not wait
    # for it: the first chunk does.
    opened: asyncio.Future[None] | None = None
    conversation_id: uuid.UUID | None = None
    question_id: uuid.UUID | None = None  # the user message a placed exchange stored
    earlier_ids: tuple[uuid.UUID, ...] = ()  # the turns it stored before that (Placement.earlier)
    parent_hash: str = ROOT_HASH
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    calls: ToolCalls = field(default_factory=ToolCalls)  # the tool calls generated so far
    # The generated tokens' log probabilities, when asked for (OpenAI's logprobs.content).
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, in the backend's prefix cache (when it says)
    finish_reason: str | None = None
    ttft: float | None = None
    _started: float = field(default_factory=time.perf_counter)
    span: Span = INVALID_SPAN  # "chat {model}", from open to settle
    _settling: asyncio.Future[None] | None = None
    _checkpoint: asyncio.Future[None] | None = None
    # A shutdown's deadline ended the answer early (see ``interrupt``): why, as told the client.
    interrupted: str | None = None
    _task: asyncio.Task[Any] | None = None  # the task reading the stream
    _pulling: bool = False  # that task awaits the source's next chunk
    _cancelled_it: bool = False  # interrupt() cancelled that wait

    @property
    def cached(self) -> bool:
        return self.slot is None

    @property
    def flags(self) -> dict[str, list[str]] | None:
        """What moderation flagged, as stored with the answer (None: nothing)."""
        if not self.flags_in and not self.flags_out:
            return None
        return {"input": list(self.flags_in), "output": list(self.flags_out)}

    @property
    def headers(self) -> dict[str, str]:
        """Rate-limit headers, and whether the cache answered or the plan was degraded."""
        headers = dict(self.reservation.headers)
        if self.cache_key is not None:
            headers["x-lamplighter-cache"] = "hit" if self.cached else "miss"
        if self.degraded is not None:
            headers["x-lamplighter-degraded"] = self.degraded.describe()
        if self.moderation == "warn" and self.flags_in:
            headers["x-lamplighter-moderation"] = "flagged: " + ", ".join(self.flags_in)
        return headers

    @property
    def id(self) -> str:
        return completion_id(self.message_id)

    @property
    def model(self) -> str:
        return self.prepared.request.model

    @property
    def prompt_used(self) -> int:
        """The prompt's tokens this exchange uses (and is charged): none when it ended in an
        error before any backend gave a token, so the client got an error and nothing else."""
        if self.finish_reason == "error" and self.ttft is None:
            return 0
        return self.prepared.prompt_tokens

    @property
    def usage(self) -> TokenCount:
        prompt = self.prompt_used
        cached = prompt if self.cached else min(self.cached_tokens, prompt)
        return TokenCount(prompt, self.completion_tokens, cached)

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def turn(self) -> Turn:
        """The answer as a turn of its conversation (its path hash is made of it)."""
        calls = self.calls.calls
        encoded = None if calls is None else json.dumps(calls, separators=(",", ":"))
        return Turn("assistant", self.content, tool_calls=encoded)

    async def stream(self) -> AsyncIterator[Chunk]:
        """The answer's chunks. The last one carries ``finish_reason`` and is released only once
        the answer and its usage are durable."""
        chunks = self.source(self.prepared)
        last_checkpoint = time.perf_counter()
        self._task = asyncio.current_task()
        try:
            while True:
                if self.interrupted is not None:
                    # Ended by a shutdown: what was generated is the answer, settled as cut.
                    self.finish_reason = "shutdown"
                    await self._settle("cut")
                    yield Chunk("", tokens=0, finish_reason="length")
                    return
                self._pulling = True
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if not self._interrupt_cancelled():
                        raise
                    continue
                finally:
                    self._pulling = False
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self._started
                    if self.opened is not None:
                        # Nothing of the answer is shown before its question is durable.
                        await asyncio.shield(self.opened)
                self.completion_tokens += chunk.tokens
                self.text.append(chunk.text)
                if chunk.tool_calls:
                    self.calls.add(chunk.tool_calls)
                self.logprobs.extend(chunk.logprobs)
                if chunk.finish_reason is not None:
                    self.finish_reason = chunk.finish_reason
                    if chunk.prompt_tokens is not None:
                        self.prepared = replace(self.prepared, prompt_tokens=chunk.prompt_tokens)
                    if chunk.cached_tokens is not None:
                        self.cached_tokens = chunk.cached_tokens
                    await self._settle("complete")
                    yield chunk
                    return
                if chunk.text and self.moderation != "off":
                    verdict = self.service.moderation.check_output(self.content)
                    if verdict.flagged:
                        self.flag_output(verdict.categories)
                        if self.moderation == "block":
                            # Stop here, as OpenAI does: the rest is never generated.
                            self.text.pop()
                            self.finish_reason = "content_filter"
                            await self._settle("complete")
                            yield Chunk("", tokens=0, finish_reason="content_filter")
                            return
                if chunk.text or chunk.tool_calls or chunk.logprobs:
                    yield chunk
                now = time.perf_counter()
                if now - last_checkpoint >= CHECKPOINT_SECONDS:
                    last_checkpoint = now
                    self._save_partial()
        except (EngineFailed, Overloaded):
            # The backend broke: keep what it produced, marked as an error rather than a cut.
            if self._settling is None:
                self.finish_reason = "error"
                await self._settle("error")
            raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            await self.close()

    def interrupt(self, why: str) -> bool:
        """End the answer now (a stopping server's deadline passed): the stream yields a last
        chunk with ``finish_reason`` "length" instead of waiting for the next token, and what was
        generated is settled as cut. False if the answer was already ending."""
        if self._settling is not None or self.interrupted is not None:
            return False
        self.interrupted = why
        if self._pulling and self._task is not None:
            # Waiting on the backend, perhaps for a long time: stop waiting.
            self._cancelled_it = True
            self._task.cancel()
        return True

    def _interrupt_cancelled(self) -> bool:
        """Whether the cancellation just caught was interrupt()'s alone (then it is taken back);
        a client that left at the same moment still cancels the stream."""
        if not self._cancelled_it or self._task is None:
            return False
        self._cancelled_it = False
        return self._task.uncancel() == 0

    def start_over(self, failed: str) -> None:
        """Forget what a failed backend produced of an answer nobody has seen (``whole``), so
        that another backend's answer replaces it; only the answer delivered is charged."""
        self.service.metrics.discarded_tokens.labels(failed).inc(self.completion_tokens)
        self.text.clear()
        self.calls.clear()
        self.logprobs.clear()
        self.completion_tokens = 0
        self.flags_out = ()
        self.ttft = None  # nor has its first token been given to anyone

    def flag_output(self, categories: tuple[str, ...]) -> None:
        for category in categories:
            if category not in self.flags_out:
                self.flags_out += (category,)
                self.service.metrics.moderation.labels("output", category, self.moderation).inc()

    async def close(self) -> None:
        """Settle what was generated as cut, unless the answer is already settled. Safe to call
        any number of times, and before the stream was ever started."""
        if self._settling is None:
            self.finish_reason = self.finish_reason or "cancelled"
        await self._settle("cut")

    def _save_partial(self) -> None:
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        self._checkpoint = self.service.writer.submit(
            partial(self.service.save_partial, self, self.content, self.completion_tokens)
        )

    async def _settle(self, status: str) -> None:
        if self._settling is None:
            self._settling = asyncio.ensure_future(self._write(status))
            self._settling.add_done_callback(lambda _: self.service.live.discard(self))
        # Shielded: cancelling the stream (the client left) must not cancel writing down what
        # it produced; the write finishes even if nobody waits for it any more.
        await asyncio.shield(self._settling)

    async def _write(self, status: str) -> None:
        used = self.prompt_used + self.completion_tokens
        try:
            await self.service.settle(self, status)  # queued after any checkpoint
            if self._checkpoint is not None:  # a failed checkpoint is only a missed one
                await asyncio.gather(self._checkpoint, return_exceptions=True)
            self.service.metrics.observe(self, status, time.perf_counter() - self._started)
            if self.calls.calls is not None:
                self.service.metrics.features.labels("tool_calls").inc()
            self._end_span(status)
            if status == "complete" and self.cache_key is not None and not self.cached:
                self.service.remember(self)
        finally:
            if self.slot is not None:
                self.slot.release(used)
            await self.service.limiter.settle(self.reservation, used)

    def _end_span(self, status: str) -> None:
        span = self.span
        span.set_attribute("gen_ai.usage.input_tokens", self.prepared.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", self.completion_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [self.finish_reason or status])
        span.set_attribute("gen_ai.response.id", self.id)
        span.set_attribute("lamplighter.outcome", status)
        span.set_attribute("lamplighter.cached", self.cached)
        if status == "error":
            span.set_status(Status(StatusCode.ERROR))
        span.end()


async def _no_bonus(_: uuid.UUID) -> int:
    return 0


class ChatService:
    def __init__(
        self,
        db: Database,
        router: Router,
        plans: PlanBook,
        limiter: RateLimiter,
        admission: Admission,
        *,
        cache: ResponseCache | None = None,
        degrade: tuple[DegradeRule, ...] = (),
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        moderation: Moderation | None = None,
        bonus: Callable[[uuid.UUID], Awaitable[int]] | None = None,
    ) -> None:
        """``bonus`` says how many extra daily tokens a user's feedback has earned."""
        self.moderation = moderation or Moderation()
        self.bonus = bonus or _no_bonus
        self.db = db
        self.tracer = tracer or NoOpTracer()
        self.router = router
        self.plans = plans
        self.limiter = limiter
        self.admission = admission
        self.cache = cache or ResponseCache()
        self.degrade = degrade
        self.metrics = metrics or Metrics()
        self.metrics.watch(self)
        # Exchanges opened and not yet settled; shutdown settles them before closing the database.
        self.live: set[Exchange] = set()
        # Exchanges run by tasks of their own (background responses, web chats' answers), by
        # answer id, so that a cancel can stop one and a watching page keep one going.
        self.detached: dict[uuid.UUID, Detached] = {}
        # Set by ``interrupt_all`` at a shutdown's deadline: why no answer may run any more.
        self.stopping: str | None = None
        # Every exchange's writes go through one queue, in order, committed in groups. Threading
        # a request reads then writes the user's tree; one job at a time keeps two identical
        # requests from storing the same path twice.
        self.writer = Writer(db)
        # Requests routed to a backend and not yet in its admission pool, by the task routing
        # them: they count as load, or a burst would all go where the first one went.
        self._routing: dict[asyncio.Task[Any], str] = {}

    async def open(
        self,
        principal: Principal,
        request: GenerationRequest,
        *,
        store: bool = True,
        placement: Placement | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Exchange:
        """Everything before the first token; every refusal (400, 404, 429, 503) is raised here,
        before a response has started. ``metadata`` (an API client's) is stored with the
        answer."""
        span = self.tracer.start_span(
            f"chat {request.model}",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": request.model,
                "lamplighter.plan": self.plans.get(principal.plan).name,
            },
        )
        try:
            with use_span(span, end_on_exit=False):
                exchange = await self._open(principal, request, store, placement, metadata)
        except BaseException as error:
            self._routed()
            if isinstance(error, APIError):
                self.metrics.refused(self.plans.get(principal.plan).name, error.code)
                span.set_attribute("error.type", error.code or type(error).__name__)
            span.set_status(Status(StatusCode.ERROR))
            span.end()
            raise
        exchange.span = span
        span.set_attribute("gen_ai.response.model", exchange.model)
        return exchange

    async def _open(
        self,
        principal: Principal,
        request: GenerationRequest,
        store: bool,
        placement: Placement | None,
        metadata: dict[str, str] | None,
    ) -> Exchange:
        plan = self.plans.get(principal.plan)
        if not plan.allows(request.model):
            refused = NotFound(
                f"The model '{request.model}' is not available on plan '{plan.name}'.",
                param="model",
                code="model_not_found",
            )
            refused.violation = "model_not_allowed"
            raise refused
        action = self.moderation.action(plan.name)
        flags_in: tuple[str, ...] = ()
        if action != "off":
            question = next((t.content for t in reversed(request.turns) if t.role == "user"), "")
            verdict = await self.moderation.check_input(question)
            flags_in = verdict.categories
            for category in flags_in:
                self.metrics.moderation.labels("input", category, action).inc()
            if verdict.flagged and action == "block":
                raise ContentBlocked(verdict)
        route = self._route(request, plan)
        backend = route.backend
        pool = self.admission.pool(backend.name, backend.capacity)
        cap = plan.max_tokens
        # Under pressure a lower plan is degraded (shorter answers, a smaller model) before
        # anyone is refused.
        rule = degradation(self.degrade, plan.name, pool.queued)
        degraded: Degradation | None = None
        if rule is not None:
            model = rule.model if rule.model not in (None, request.model) else None
            if rule.max_tokens is not None and rule.max_tokens < cap:
                cap = rule.max_tokens
            else:
                rule = replace(rule, max_tokens=None)
            if model is not None:
                route = self._route(replace(request, model=model), plan)
                backend = route.backend
                pool = self.admission.pool(backend.name, backend.capacity)
                request = replace(request, model=model)
            if model is not None or rule.max_tokens is not None:
                degraded = Degradation(rule.max_tokens, model)
        asked = replace(request, max_tokens_cap=cap, priority=plan.priority)
        fit = placement is not None and placement.fit
        prepared = await self._prepare(backend, asked, fit=fit)
        cost = prepared.prompt_tokens + prepared.max_tokens
        try:
            reservation = await self.limiter.reserve(
                plan, principal.user_id, cost, await self.bonus(principal.user_id)
            )
        except RateLimited as refused:
            if refused.type == "concurrent_requests":
                # Not in a second: when one of the caller's answers running here should end.
                ends = self.admission.ends_in(str(principal.user_id))
                if ends is not None:
                    refused.retry_in(max(1.0, ends))
            raise
        key = cache_key(plan.name, request, prepared.max_tokens) if plan.cache_ttl_s else None
        cached = await self.cache.lookup(key, self.limiter.clock.monotonic()) if key else None
        slot: Slot | None = None
        try:
            if self.stopping is not None:
                raise ShuttingDown(self.stopping, retry_after=1)
            if cached is None:
                waited = time.perf_counter()
                user = str(principal.user_id)
                try:
                    with self.tracer.start_as_current_span(
                        "admission", attributes={"lamplighter.backend": backend.name}
                    ) as admission:
                        slot = await pool.try_enter(user, plan, cost)
                        if slot is None and pool.gate is not None and pool.gate.answering:
                            moved = await self._overflow(user, asked, plan, route, placement)
                            if moved is not None:
                                route, prepared, slot = moved
                                backend = route.backend
                                admission.set_attribute("lamplighter.backend", backend.name)
                        if slot is None:
                            route, prepared, slot = await self._enter(
                                user,
                                plan,
                                request,
                                route,
                                prepared,
                                lambda other: self._prepare(other, asked, fit=fit),
                            )
                            backend = route.backend
                            admission.set_attribute("lamplighter.backend", backend.name)
                finally:
                    self.metrics.queue_wait.labels(plan.name, backend.name).observe(
                        time.perf_counter() - waited
                    )
            self.metrics.routed.labels(backend.name, route.reason).inc()
            self._routed()
            # Ids are time-ordered: the answer's must sort after its question's, which are stored
            # later (by ``_begin``) but named now.
            question_ids = [new_id() for _ in request.turns] if placement is None else []
            exchange = Exchange(
                self,
                principal,
                cached.replay if cached else backend.generate,
                prepared,
                plan,
                reservation,
                slot,
                new_id(),
                store,
                cache_key=key,
                degraded=degraded,
                moderation=action,
                flags_in=flags_in,
                metadata=metadata,
            )
            if cached is None:
                exchange.source = partial(self._generate, exchange, backend)
            if placement is not None:
                # Placing can be refused (the parent was deleted meanwhile): said before the
                # response starts.
                placing = self.writer.submit(partial(self._place, exchange, placement, request))
                try:
                    await asyncio.shield(placing)
                except asyncio.CancelledError:
                    # The client left while its question was being stored. The write lands all
                    # the same, and then its answer, never begun, is settled as cut.
                    placing.add_done_callback(partial(self._abandon, exchange))
                    raise
            else:
                # Written while the backend starts; the first chunk waits for it (``stream``).
                exchange.opened = self.writer.submit(
                    partial(self._begin, exchange, request, question_ids)
                )
        except BaseException as error:
            # Refused, failed or abandoned before generating: nothing was used.
            if slot is not None:
                slot.release(0)
            await self.limiter.settle(reservation, 0)
            if isinstance(error, APIError):
                error.headers.update(await self.limiter.headers(plan, principal.user_id))
            raise
        self.live.add(exchange)
        if self.stopping is not None:
            exchange.interrupt(self.stopping)
        self.metrics.admitted.labels(plan.name).inc()
        if degraded is not None:
            self.metrics.degraded.labels(plan.name).inc()
        for feature in _features(request):
            self.metrics.features.labels(feature).inc()
        return exchange

    def _route(
        self, request: GenerationRequest, plan: Plan, exclude: Collection[str] = ()
    ) -> Route:
        """The backend for a request: healthy, allowed to the plan, holding the conversation's
        prefix if it can, else the least loaded (see engines/router.py)."""
        route = self.router.choose(
            request.model,
            plan=plan.name,
            turns=request.turns,
            occupancy=self._occupancy,
            exclude=exclude,
        )
        self._route_to(route.backend.name)
        return route

    def _route_to(self, backend: str) -> None:
        """This task's request is on its way to ``backend`` (counted in ``_occupancy``)."""
        task = asyncio.current_task()
        if task is not None:
            self._routing[task] = backend

    async def _overflow(
        self,
        user: str,
        request: GenerationRequest,
        plan: Plan,
        full: Route,
        placement: Placement | None,
    ) -> tuple[Route, PreparedRequest, Slot] | None:
        """Another backend with a slot free now, for a request whose backend, shared with other
        replicas, has none: replicas routing at the same instant do not see each other's
        choices, and could otherwise all queue on the backend their conversation hashes to
        while others sit idle. Only backends that look free from here are asked; None when
        none of them has room (the request then queues where it was routed)."""
        tried = {full.backend.name}
        try:
            while True:
                try:
                    route = self._route(request, plan, tried)
                except APIError:  # no other candidate
                    break
                backend = route.backend
                tried.add(backend.name)
                if load_of(backend, self._occupancy(backend.name) - 1) > 1.0:
                    break  # the least loaded of the rest is full too
                try:
                    prepared = await self._prepare(
                        backend, request, fit=placement is not None and placement.fit
                    )
                except APIError:  # its context is smaller
                    continue
                pool = self.admission.pool(backend.name, backend.capacity)
                cost = prepared.prompt_tokens + prepared.max_tokens
                slot = await pool.try_enter(user, plan, cost)
                if slot is not None:
                    self.metrics.overflows.labels(full.backend.name).inc()
                    return Route(backend, "overflow"), prepared, slot
                if pool.gate is None or not pool.gate.answering:
                    break  # Redis is away: each replica keeps to its own share
        except BaseException:
            self._route_to(full.backend.name)
            raise
        # It queues where it was routed after all.
        self._route_to(full.backend.name)
        self.router.serves(request.turns, full.backend.name)
        return None

    def _routed(self) -> None:
        """This task's request is in its backend's pool now (or gave up)."""
        task = asyncio.current_task()
        if task is not None:
            self._routing.pop(task, None)

    def _occupancy(self, backend: str) -> int:
        """Requests this gateway has on a backend: running, queued, or about to queue."""
        pool = self.admission.pools.get(backend)
        routing = sum(1 for name in self._routing.values() if name == backend)
        return routing + (pool.in_use + pool.queued if pool is not None else 0)

    async def _generate(
        self, exchange: Exchange, backend: Backend, prepared: PreparedRequest
    ) -> AsyncIterator[Chunk]:
        """The backend's chunks. If it fails before its first chunk in a way another backend may
        not (``Unavailable``: unreachable, 5xx, breaker open; or its own 429), the request moves
        to the next backend that can serve it, taking a slot there. After the first chunk a
        failure ends a streamed answer, whose client has part of it; a whole answer starts over
        on the next backend, as its client has seen nothing yet. When no backend is left, or
        none frees a slot within the plan's patience, the answer ends with a 503 that says
        why."""
        tried = {backend.name}
        while True:
            chunks = backend.generate(prepared)
            started = False
            try:
                async for chunk in chunks:
                    started = True
                    yield chunk
                return
            except (EngineFailed, Overloaded) as error:
                if started and exchange.whole:
                    exchange.start_over(backend.name)
                elif started or not isinstance(error, (Unavailable, Overloaded)):
                    raise
                failure = error
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
            try:
                backend, prepared = await self._failover(exchange, backend, tried)
            except Overloaded as refusal:
                # No sooner than the last backend asked, if it was full and said when (429).
                asked = failure.retry_after if isinstance(failure, Overloaded) else 0.0
                raise Overloaded(
                    f"{failure.message} {refusal.message}",
                    retry_after=max(refusal.retry_after, asked),
                    code=refusal.code,
                ) from failure

    async def _failover(
        self, exchange: Exchange, failed: Backend, tried: set[str]
    ) -> tuple[Backend, PreparedRequest]:
        """Move an exchange that has produced nothing to a backend not ``tried`` yet, taking a
        slot there (raises Overloaded when none is left or none has a slot in time)."""
        request, plan = exchange.prepared.request, exchange.plan
        try:
            while True:
                backend = self._route(request, plan, tried).backend
                self.metrics.routed.labels(backend.name, "failover").inc()
                tried.add(backend.name)
                try:
                    prepared = await backend.prepare(request)  # its context may be smaller
                except APIError:
                    continue
                break
            self.metrics.failovers.labels(failed.name).inc()
            if exchange.slot is not None:
                exchange.slot.release(0)
                exchange.slot = None
            route, prepared, exchange.slot = await self._enter(
                str(exchange.principal.user_id),
                plan,
                request,
                Route(backend, "failover"),
                prepared,
                lambda other: other.prepare(request),
                tried,
            )
        finally:
            self._routed()
        exchange.prepared = prepared
        return route.backend, prepared

    async def _enter(
        self,
        user: str,
        plan: Plan,
        request: GenerationRequest,
        route: Route,
        prepared: PreparedRequest,
        prepare: Callable[[Backend], Awaitable[PreparedRequest]],
        tried: set[str] | None = None,
    ) -> tuple[Route, PreparedRequest, Slot]:
        """A slot on ``route``'s backend, waiting in its queue; if that backend stops taking
        requests meanwhile (it hung, or broke: ``BackendLost``), on the next one not ``tried``,
        the request ``prepare``d again for it. Overloaded when none is left."""
        tried = {route.backend.name} if tried is None else tried
        while True:
            backend = route.backend
            pool = self.admission.pool(backend.name, backend.capacity)
            cost = prepared.prompt_tokens + prepared.max_tokens
            try:
                slot = await pool.enter(user, plan, cost, partial(accepting, backend))
            except BackendLost:  # elsewhere, then
                self.metrics.failovers.labels(backend.name).inc()
                route = self._route(request, plan, tried)
                tried.add(route.backend.name)
                prepared = await prepare(route.backend)
                continue
            return route, prepared, slot

    @staticmethod
    async def _prepare(backend: Backend, request: GenerationRequest, fit: bool) -> PreparedRequest:
        """Count the prompt. With ``fit`` (the web chat, which sends whole conversations), the
        oldest turns after any system prompt are left out until the rest fits the model's
        context with room for an answer, as chat products do; API callers choose their own
        messages and get the 400."""
        wanted = min(FIT_ANSWER_TOKENS, request.max_tokens_cap or FIT_ANSWER_TOKENS)
        while True:
            lead = 0
            while lead < len(request.turns) and request.turns[lead].role == "system":
                lead += 1
            rest = list(request.turns[lead:])
            try:
                prepared = await backend.prepare(request)
                if not fit or prepared.max_tokens >= wanted or len(rest) <= 1:
                    return prepared
            except ContextLengthExceeded:
                if not fit or len(rest) <= 1:
                    raise
            rest.pop(0)
            while len(rest) > 1 and rest[0].role != "user":
                rest.pop(0)
            request = replace(request, turns=(*request.turns[:lead], *rest))

    def remember(self, exchange: Exchange) -> None:
        """Keep a finished deterministic answer for repeats of the same request (not one that
        calls tools or has log probabilities: a replay carries text only)."""
        request = exchange.prepared.request
        if exchange.cache_key is None or exchange.calls.calls is not None:
            return
        if request.logprobs is not None:
            return
        answer = CachedAnswer(
            text=exchange.content,
            prompt_tokens=exchange.prepared.prompt_tokens,
            completion_tokens=exchange.completion_tokens,
            finish_reason=exchange.finish_reason or "stop",
        )
        now = self.limiter.clock.monotonic()
        self.cache.keep(exchange.cache_key, answer, exchange.plan.cache_ttl_s, now)

    async def _begin(
        self,
        exchange: Exchange,
        request: GenerationRequest,
        question_ids: list[uuid.UUID],
        session: AsyncSession,
    ) -> None:
        """The write that opens an API exchange: its question threaded into the user's tree
        (unless the caller said ``store: false``) and its ledger row, which exists from the start
        so that even a crash leaves the usage behind."""
        if exchange.stored:
            await self._thread(Conversations(session), exchange, request, question_ids)
        exchange.usage_id = await UsageLedger(session).record(self._usage(exchange))

    async def _thread(
        self,
        conversations: Conversations,
        exchange: Exchange,
        request: GenerationRequest,
        ids: list[uuid.UUID],
    ) -> None:
        """Store the request's messages the tree does not hold yet (found by their path hashes,
        named by ``ids``), and the answer, in progress, under the last of them."""
        user_id, turns = exchange.principal.user_id, request.turns
        hashes = path_hashes(turns)
        known = await conversations.nodes_by_path(user_id, hashes)
        reused = stored_prefix(hashes, known, turns)
        now = utcnow()
        parent = known[hashes[reused - 1]] if reused else None
        conversation_id = await _lead_to_answer(
            conversations, exchange, parent.conversation_id if parent else None, turns, now
        )
        rows: list[dict[str, Any]] = []
        parent_id = parent.id if parent else None
        for depth in range(reused, len(turns)):
            node_id = ids[depth]
            rows.append(
                _message_row(node_id, conversation_id, user_id, parent_id, turns[depth], depth, now)
                | {"path_hash": hashes[depth]}
            )
            parent_id = node_id
        rows.append(_answer_row(exchange, conversation_id, parent_id, len(turns), now))
        await conversations.insert_messages(rows)
        exchange.conversation_id = conversation_id
        exchange.parent_hash = hashes[-1] if turns else ROOT_HASH

    async def _place(
        self,
        exchange: Exchange,
        placement: Placement,
        request: GenerationRequest,
        session: AsyncSession,
    ) -> None:
        """The write that opens a placed exchange (see ``Placement``) and its ledger row. Path
        hashes chain from the stored parent, so they stay right when the caller sent the model
        only the latest part of a long conversation."""
        conversations = Conversations(session)
        user_id, turns, now = exchange.principal.user_id, request.turns, utcnow()
        parent = None
        if placement.parent_id is not None:
            parent = await conversations.message_of(user_id, placement.parent_id)
            if parent is None:  # deleted since the caller looked
                raise NotFound("That message no longer exists.", code="message_not_found")
        parent_id = parent.id if parent else None
        new_ids: list[uuid.UUID] = []
        if placement.new_turn:
            # Ids are time-ordered: each new turn's must sort after the one before it, and the
            # answer's after its question's.
            new_ids = [new_id() for _ in range(placement.earlier + 1)]
            exchange.question_id, exchange.earlier_ids = new_ids[-1], tuple(new_ids[:-1])
            exchange.message_id = new_id()
        conversation_id = await _lead_to_answer(
            conversations, exchange, placement.conversation_id, turns, now
        )
        parent_hash = parent.path_hash if parent else ROOT_HASH
        depth = parent.depth + 1 if parent else 0
        rows: list[dict[str, Any]] = []
        for message_id, turn in zip(new_ids, turns[len(turns) - len(new_ids) :], strict=True):
            parent_hash = node_hash(parent_hash, turn)
            row = _message_row(message_id, conversation_id, user_id, parent_id, turn, depth, now)
            rows.append(row | {"path_hash": parent_hash})
            parent_id = message_id
            depth += 1
        asked = {
            "instructions": placement.instructions,
            "previous_response_id": placement.continues,
        }
        rows.append(_answer_row(exchange, conversation_id, parent_id, depth, now) | asked)
        await conversations.insert_messages(rows)
        exchange.conversation_id = conversation_id
        exchange.parent_hash = parent_hash
        exchange.usage_id = await UsageLedger(session).record(self._usage(exchange))

    def _abandon(self, exchange: Exchange, placing: asyncio.Future[None]) -> None:
        """Settle the answer that a placement stored for a client that had left by then: cut,
        with nothing in it and nothing charged (the slot and the reservation were given back
        when it left). Otherwise it would read "in progress" until the next restart."""
        if placing.exception() is not None:
            return  # nothing was stored

        async def settle(session: AsyncSession) -> None:
            if exchange.stored:
                await Conversations(session).finish_message(
                    exchange.message_id,
                    content="",
                    status="cut",
                    finish_reason="cancelled",
                    when=utcnow(),
                    path_hash=node_hash(exchange.parent_hash, Turn("assistant", "")),
                )
            if exchange.usage_id is not None:
                await UsageLedger(session).update(
                    exchange.usage_id, prompt_tokens=0, finish_reason="cancelled"
                )

        self.writer.submit(settle)

    async def save_partial(
        self, exchange: Exchange, content: str, tokens: int, session: AsyncSession
    ) -> None:
        """Checkpoint a streaming answer and the tokens it has used so far (a writer job)."""
        if exchange.stored:
            await Conversations(session).finish_message(
                exchange.message_id,
                content=content,
                status="in_progress",
                finish_reason=None,
                when=utcnow(),
            )
        if exchange.usage_id is not None:
            await UsageLedger(session).update(exchange.usage_id, completion_tokens=tokens)

    def _usage(self, exchange: Exchange) -> dict[str, Any]:
        """The exchange's ledger row as it stands."""
        elapsed = time.perf_counter() - exchange._started
        return {
            "user_id": exchange.principal.user_id,
            "api_key_id": exchange.principal.api_key_id,
            "message_id": exchange.message_id if exchange.stored else None,
            "model": exchange.model,
            "prompt_tokens": exchange.prompt_used,
            "completion_tokens": exchange.completion_tokens,
            "latency_ms": round(elapsed * 1000),
            "ttft_ms": None if exchange.ttft is None else round(exchange.ttft * 1000),
            "finish_reason": exchange.finish_reason or "in_progress",
            "created_at": (now := utcnow()),
            "alive_at": now,
            "plan": exchange.plan.name,
            "cached": exchange.cached,
        }

    async def settle(self, exchange: Exchange, status: str) -> None:
        """Make the answer (if stored) and its usage durable, in one transaction (shared with
        whatever else is being written)."""
        await self.writer.run(partial(self._finish, exchange, status))

    async def _finish(self, exchange: Exchange, status: str, session: AsyncSession) -> None:
        opened = exchange.opened
        if opened is not None and opened.done() and opened.exception() is not None:
            # The write that opened the exchange failed (the client was told at its first
            # chunk): nothing of it is stored, but the tokens it used are still counted.
            exchange.stored, exchange.usage_id = False, None
        if exchange.stored:
            await Conversations(session).finish_message(
                exchange.message_id,
                content=exchange.content,
                status=status,
                finish_reason=exchange.finish_reason,
                when=utcnow(),
                path_hash=node_hash(exchange.parent_hash, exchange.turn),
                moderation=exchange.flags,
                tool_calls=exchange.calls.calls,
            )
        usage = self._usage(exchange)
        usage["finish_reason"] = exchange.finish_reason or status
        ledger = UsageLedger(session)
        if exchange.usage_id is None:
            await ledger.record(usage)
            return
        await ledger.update(
            exchange.usage_id,
            **{
                name: usage[name]
                for name in (
                    "prompt_tokens",
                    "completion_tokens",
                    "latency_ms",
                    "ttft_ms",
                    "finish_reason",
                )
            },
        )

    def interrupt_all(self, why: str) -> int:
        """A stopping server's deadline: end every open answer now (each stream's last chunk
        says so, and what it generated is settled), refuse the requests still waiting for a
        backend slot, and any request that gets this far from now on. How many were ended."""
        self.stopping = why
        self.admission.refuse_waiting(why)
        return sum(exchange.interrupt(why) for exchange in list(self.live))

    def detach(self, exchange: Exchange, *, read: bool = False, lasting: bool = False) -> Detached:
        """Run an exchange in a task of its own, to its end, whoever reads it: its answer is
        stored and checkpointed as any other, a failure settles it as an error, and ``cancel``
        (or a shutdown's deadline) cuts it. Nobody reads a background response's; with
        ``read`` the chunks are kept for ``Detached.chunks`` until the reader leaves, which
        cuts the answer a while later unless it is ``lasting`` (see ``Detached``)."""
        detached = Detached(self, exchange, read, lasting)
        self.detached[exchange.message_id] = detached
        if not read or lasting:
            self.metrics.features.labels("background").inc()
        return detached

    def cancel(self, message_id: uuid.UUID) -> asyncio.Task[None] | None:
        """Stop the detached exchange of answer ``message_id`` if it runs here (its answer is
        settled as cut, with what was generated and charged); the task, to wait for, or None
        when none runs here."""
        detached = self.detached.get(message_id)
        if detached is None:
            return None
        detached.task.cancel()
        return detached.task

    def watch(self, message_id: uuid.UUID) -> bool:
        """Someone looks at answer ``message_id`` while it is written: if its reader left, it
        goes on (see ``Detached.leave``). Whether it runs here."""
        detached = self.detached.get(message_id)
        if detached is not None:
            detached.watched()
        return detached is not None

    async def drain(self) -> None:
        """Settle every exchange still open (as cut, unless it finished meanwhile) and wait
        until its answer and usage are written."""
        while self.live:
            await asyncio.gather(*(e.close() for e in list(self.live)), return_exceptions=True)
        tasks = [detached.task for detached in self.detached.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.writer.close()

    async def recover(self, silent_for: float | None = None) -> int:
        """Answers a crashed process left in progress are marked cut (keeping their last
        checkpoint, and a path hash so they can be continued), and their usage records
        interrupted (keeping the tokens counted at the last checkpoint); how many answers.

        A process alone on its store (``silent_for`` None, at start) takes every answer in
        progress for one its last run left. Replicas sharing a store take only those that no
        replica has said it runs (``heartbeat``) for ``silent_for`` seconds: the others run on
        live replicas, and a replica that died leaves its own behind, settled then by any."""
        now = utcnow()
        async with self.db.transaction() as session:
            conversations, ledger = Conversations(session), UsageLedger(session)
            if silent_for is None:
                cut = await conversations.cut_unfinished(now)
                await ledger.interrupt_unfinished()
                return cut
            ours = {exchange.usage_id for exchange in self.live}
            left = [
                (row, answer)
                for row, answer in await ledger.silent_since(now - timedelta(seconds=silent_for))
                if row not in ours
            ]
            if not left:
                return 0
            await ledger.interrupt_unfinished([row for row, _ in left])
            return await conversations.cut_unfinished(now, [a for _, a in left if a is not None])

    async def heartbeat(self) -> None:
        """Say that the exchanges running here still run (see ``recover``)."""
        rows = [exchange.usage_id for exchange in self.live if exchange.usage_id is not None]
        if rows:
            when = utcnow()
            await self.writer.run(lambda session: UsageLedger(session).alive(rows, when))


class Detached:
    """An exchange run by a task of its own (``ChatService.detach``), so that whoever reads it
    can leave without ending it.

    A reader takes the chunks from ``chunks``; when it leaves before the end (``leave``: a web
    page reloaded, closed or cut off), the answer goes on for ``LINGER_S``, and for
    ``LINGER_WATCHED_S`` past each ``watched`` (the page came back and reads the chat), then is
    cut as a stop would cut it; at once if a request waits for its backend then. With no
    reader (a background response) it runs to its end, and so with a ``lasting`` reader (a
    background response streamed): its leaving only stops the chunks being kept.
    """

    def __init__(
        self, service: ChatService, exchange: Exchange, read: bool, lasting: bool = False
    ) -> None:
        self.service = service
        self.exchange = exchange
        self.lasting = lasting
        # What the reader has yet to take: chunks, then the error that ended the answer if one
        # did, then None. Unbounded: an answer is at most its token limit long.
        self._chunks: asyncio.Queue[Chunk | Exception | None] | None = (
            asyncio.Queue() if read else None
        )
        self._deadline: asyncio.Timeout | None = None
        self._read, self._left = read, not read
        self._whole = False  # the answer's last chunk came: a reader leaving after it left none
        # For readers who join while it is written (``follow``): chunks so far, and the end.
        self._grown = asyncio.Condition()
        self._chunks_seen, self._ended = 0, False
        self.task = asyncio.create_task(self._run(), name=f"detached {exchange.id}")

    async def _run(self) -> None:
        ended: Exception | None = None
        try:
            async with asyncio.timeout(None) as self._deadline:
                async for chunk in self.exchange.stream():
                    self._whole = chunk.finish_reason is not None
                    if self._chunks is not None:
                        self._chunks.put_nowait(chunk)
                    await self._tell_followers()
            if self._left and self._read and not self.lasting:
                self.service.metrics.left.labels("finished").inc()
        except TimeoutError:
            # Its reader left and nobody came back: cut, as the stream's end settled it.
            self.service.metrics.left.labels("cut").inc()
        except APIError as error:  # the answer was settled as an error: its reader is told
            ended = error
        finally:
            try:
                await self.exchange.close()  # raises if the answer could not be written
            finally:
                self.service.detached.pop(self.exchange.message_id, None)
                if self._chunks is not None:  # the reader is told the end whatever happened
                    if ended is not None:
                        self._chunks.put_nowait(ended)
                    self._chunks.put_nowait(None)
                self._ended = True
                await self._tell_followers()

    async def _tell_followers(self) -> None:
        async with self._grown:
            self._chunks_seen += 1
            self._grown.notify_all()

    async def follow(self) -> AsyncIterator[str]:
        """The answer's text so far, and again each time it grows, until it ends (settled):
        for a reader who joins while it is written here (a background response streamed
        again), who need not wait for the store's checkpoints."""
        seen = -1
        while True:
            async with self._grown:
                while self._chunks_seen == seen:
                    await self._grown.wait()
                seen, ended = self._chunks_seen, self._ended
            yield self.exchange.content
            if ended:
                return

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The answer's chunks as they come; an error that ended it is raised after the last."""
        queue = self._chunks
        assert queue is not None, "detached without a reader"
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def leave(self) -> None:
        """The reader is gone (at the end, or before it): an answer still being written goes
        on for a while, for a page that comes back to it; unless someone waits for its
        backend slot here, who is then given it at once."""
        if self._whole:
            return
        self._left, self._chunks = True, None
        if self.lasting:
            return
        slot = self.exchange.slot
        if slot is not None and slot.pool.queued and not self.task.done():
            self.service.metrics.left.labels("yielded").inc()
            self.task.cancel()
            await asyncio.wait({self.task})
            return
        self._extend(LINGER_S)

    def watched(self) -> None:
        if self._left:
            self._extend(LINGER_WATCHED_S)

    def _extend(self, seconds: float) -> None:
        if self._deadline is not None and not self.task.done():
            self._deadline.reschedule(asyncio.get_running_loop().time() + seconds)


async def _lead_to_answer(
    conversations: Conversations,
    exchange: Exchange,
    conversation_id: uuid.UUID | None,
    turns: tuple[Turn, ...],
    now: datetime,
) -> uuid.UUID:
    """The conversation the exchange's answer goes in, its current leaf moved to the answer: a
    new one, titled from ``turns``, when ``conversation_id`` is None."""
    if conversation_id is not None:
        await conversations.move_leaf(conversation_id, exchange.message_id, now)
        return conversation_id
    conversation_id = new_id()
    await conversations.insert_conversation(
        {
            "id": conversation_id,
            "user_id": exchange.principal.user_id,
            "title": title_from(turns),
            "current_leaf_id": exchange.message_id,
            "created_at": now,
            "updated_at": now,
        }
    )
    return conversation_id


def _features(request: GenerationRequest) -> list[str]:
    """What a request asked for beyond text, as ``lamplighter_request_features`` counts it."""
    found = ["tools"] if request.tools is not None else []
    if request.output_format is not None:
        found.append("json_object" if request.output_format.schema is None else "json_schema")
    if request.logprobs is not None:
        found.append("logprobs")
    return found


def _answer_row(
    exchange: Exchange,
    conversation_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    depth: int,
    now: datetime,
) -> dict[str, Any]:
    """The exchange's answer as stored before any of it is generated: empty, in progress."""
    answer = _message_row(
        exchange.message_id,
        conversation_id,
        exchange.principal.user_id,
        parent_id,
        Turn("assistant", ""),
        depth,
        now,
    )
    # The path hash is replaced by the real one once the answer's text is known.
    pending = {"path_hash": f"pending:{exchange.message_id.hex}", "status": "in_progress"}
    output = exchange.prepared.request.output_format
    tools = exchange.prepared.request.tools
    return (
        answer
        | pending
        | {
            "model": exchange.model,
            "response_format": None if output is None else output.response_format(),
            "request_metadata": exchange.metadata or None,
            "tools": None if tools is None else json.loads(tools),
        }
    )


def _message_row(
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    user_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    turn: Turn,
    depth: int,
    now: datetime,
) -> dict[str, Any]:
    """A ``messages`` row for ``Conversations.insert_messages``; the caller adds its path hash
    and, for an answer, its status and model."""
    return {
        "id": message_id,
        "conversation_id": conversation_id,
        "user_id": user_id,
        "parent_id": parent_id,
        "role": turn.role,
        "content": turn.content,
        "depth": depth,
        "status": "complete",
        "finish_reason": None,
        "model": None,
        "created_at": now,
        "updated_at": now,
        "moderation": None,
        "author": None,
        "response_format": None,
        "request_metadata": None,
        "tool_calls": None if turn.tool_calls is None else json.loads(turn.tool_calls),
        "tool_call_id": turn.tool_call_id,
        "tools": None,
        "instructions": None,
        "previous_response_id": None,
    }
