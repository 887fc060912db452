"""The surge benchmark: a real trace, replayed until it offers X times what one simulated GPU can
serve, through two front doors side by side, in virtual time.

What is replayed
    The requests of a trace (by default the bundled Azure conversation trace) keep their order,
    their gaps (scaled) and their token counts. Time is compressed so that the trace's output
    tokens per second become ``overload`` times the backend's capacity. Users and plans are laid
    over it by :class:`Population`: most requests come from ordinary users on ``free``, ``plus``
    or ``team`` who ask about once a minute, a share from a few heavy users, and every person
    gives up if nothing (neither a token nor a refusal) reaches them within their patience; some
    of them close the connection when they do, the others leave the tab open.

The backend and its capacity
    One :class:`~lamplighter.simulation.gpu.Engine` per policy with the default timing model
    (vLLM serving Llama-3-8B on one H100), sized by :func:`size`: the lowest plan may fill
    ``base_slots``, the largest concurrency at which the engine, kept full with this trace's
    requests, still gives 99% of them their first token within ``ttft_share`` of the tightest SLO
    of any plan (beyond it a request of the strictest plan could miss its SLO inside the GPU
    however short its wait in the queue); the plans above it may take ``headroom`` more (trunk
    reservation), for their bursts. The capacity ``C`` is the output tokens per second the engine
    sustains with all the pool's slots running this trace's mix
    (:func:`~lamplighter.simulation.gpu.saturate`).

The two policies
    ``fifo`` is a plain proxy: every request goes to the backend at once and waits in its FIFO
    queue; a client that disconnects is aborted there (as vLLM does), nothing else is refused.
    ``lamplighter`` puts the real traffic code in front: the plan's rate limits
    (:mod:`lamplighter.traffic.limiters`, the same buckets as
    :class:`~lamplighter.traffic.ratelimits.RateLimiter`), then the admission
    :class:`~lamplighter.traffic.scheduler.Scheduler` (priority classes, VTC fairness, patience
    and early refusal) over the pool's slots; a started request carries its plan's priority to a
    backend running vLLM's priority scheduling. A ticket's deadline is the latest start that can
    still meet the plan's TTFT SLO (the SLO less the backend's own p99 TTFT), never later than the
    plan's queue patience: a request that can no longer be served in time is refused with 503 at
    once instead of being served late. Before anyone is refused, the server's own degrade rules
    (:mod:`lamplighter.traffic.degrade`) lower the max_tokens of lower plans while requests queue.

Metrics (see ``docs/simulation.md``)
    Over the window from the first to the last arrival: *utilization* is the output tokens
    generated in it over ``C`` times its length; *goodput fraction* counts only the tokens of
    requests that completed with their first token within their plan's TTFT SLO. Over the whole
    run: *wasted token fraction* is the share of generated tokens that went to people who had
    already given up; a *silent timeout* is a person who gave up before being answered or
    refused. Per plan, ``slo_attainment`` is ``slo_met`` over the requests the plan's rate limits
    let through (``rate_limited`` ones are outside the plan's promise and counted apart).

Pure: virtual time, no I/O beyond reading the trace, no asyncio, deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamplighter.simulation.gpu import (
    H100,
    Engine,
    Request,
    SchedulingPolicy,
    TimingModel,
    largest_concurrency,
    percentile,
    saturate,
)
from lamplighter.simulation.trace import TraceRequest, describe, sample
from lamplighter.traffic.degrade import DegradeRule, degradation
from lamplighter.traffic.limiters import check, refund
from lamplighter.traffic.plans import DEFAULT_PLANS, Plan
from lamplighter.traffic.ratelimits import RateLimiter
from lamplighter.traffic.scheduler import Scheduler, Ticket

SWEEP = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
# Timers: a ticket's deadline, a person's patience (a deadline at the same instant goes first).
DEADLINE, GIVE_UP = 0, 1


@dataclass(frozen=True)
class Population:
    """Who sends the trace's requests, and how long they wait."""

    # Share of ordinary users on each plan.
    plans: tuple[tuple[str, float], ...] = (("free", 0.75), ("plus", 0.20), ("team", 0.05))
    # The plan of each heavy user, and the share of all requests they send between them.
    heavy_users: tuple[str, ...] = ("free", "free", "free", "plus")
    heavy_share: float = 0.10
    # An ordinary user sends a request about this often (so there are more users when the
    # trace is replayed faster, not the same people clicking faster).
    request_interval_s: float = 60.0
    # Patience is log-uniform in this range: nothing at all within it, and they give up.
    patience_s: tuple[float, float] = (6.0, 60.0)
    # Of those who give up, the share who close the connection (the rest leave it open).
    disconnect_share: float = 0.5

    def __post_init__(self) -> None:
        if not self.plans or any(share < 0 for _, share in self.plans):
            raise ValueError("population plans need non-negative shares")
        if not 0 <= self.heavy_share < 1 or (self.heavy_share > 0 and not self.heavy_users):
            raise ValueError("heavy_share must be in [0, 1) and needs heavy users")
        low, high = self.patience_s
        if not 0 < low <= high or self.request_interval_s <= 0:
            raise ValueError("patience and request interval must be positive")
        if not 0 <= self.disconnect_share <= 1:
            raise ValueError("disconnect_share must be in [0, 1]")


# Degrade before refusing, with the server's own rules: while anyone queues, free answers are
# capped at 512 tokens (3% of the trace's answers are longer).
DEGRADE = (DegradeRule(plans=frozenset({"free"}), when_queued_at_least=1, max_tokens=512),)


@dataclass(frozen=True)
class Config:
    overload: float = 3.0
    seed: int = 0
    model: TimingModel = H100
    plans: Mapping[str, Plan] = field(default_factory=lambda: dict(DEFAULT_PLANS))
    population: Population = field(default_factory=Population)
    # ``[[traffic.degrade]]`` rules (lamplighter.traffic.degrade); only max_tokens applies here.
    degrade: tuple[DegradeRule, ...] = DEGRADE
    # The share of the tightest TTFT SLO the backend's own p99 TTFT may take when sizing the pool.
    ttft_share: float = 0.5
    # Extra slots, as a share of the pool's, that every class but the lowest may take (trunk
    # reservation): paying plans absorb their bursts there instead of in the queue.
    headroom: float = 0.5
    # Requests sampled across the trace to measure the backend.
    calibration_requests: int = 4000

    def __post_init__(self) -> None:
        if self.overload <= 0:
            raise ValueError("overload must be positive")
        if not 0 < self.ttft_share <= 1:
            raise ValueError("ttft_share must be in (0, 1]")
        if self.headroom < 0:
            raise ValueError("headroom must be non-negative")


@dataclass(frozen=True)
class Arrival:
    id: int
    at: float
    user: str
    plan: str
    prompt_tokens: int
    output_tokens: int  # what the model would say, before any max_tokens cap
    patience_s: float
    disconnects: bool


def lay_over(
    trace: Sequence[TraceRequest], speedup: float, population: Population, seed: int
) -> list[Arrival]:
    """The trace, ``speedup`` times faster, with users, plans and patience drawn from ``seed``."""
    rng = random.Random(seed)
    start = trace[0].at
    span = max((trace[-1].at - start) / speedup, 1e-9)
    # Enough ordinary users that each sends about one request per interval (and no more users
    # than requests, for very short or very fast replays).
    requests = len(trace) * (1 - population.heavy_share)
    ordinary = max(1, min(len(trace), round(requests * population.request_interval_s / span)))
    names = [name for name, _ in population.plans]
    weights = [share for _, share in population.plans]
    plan_of = rng.choices(names, weights, k=ordinary)
    low, high = population.patience_s
    arrivals = []
    for index, request in enumerate(trace):
        if rng.random() < population.heavy_share:
            heavy = rng.randrange(len(population.heavy_users))
            user, plan = f"heavy-{heavy}", population.heavy_users[heavy]
        else:
            number = rng.randrange(ordinary)
            user, plan = f"user-{number}", plan_of[number]
        patience = math.exp(rng.uniform(math.log(low), math.log(high)))
        arrivals.append(
            Arrival(
                id=index,
                at=(request.at - start) / speedup,
                user=user,
                plan=plan,
                prompt_tokens=request.prompt_tokens,
                output_tokens=request.output_tokens,
                patience_s=patience,
                disconnects=rng.random() < population.disconnect_share,
            )
        )
    return arrivals


# -- sizing the backend --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    """The admission pool in front of the backend, and what the backend does at its size."""

    slots: int  # the most requests the pool lets run at once
    base_slots: int  # the most the lowest class may fill (the rest is headroom for the others)
    capacity_tokens_per_s: float  # output tokens/s the backend sustains with ``slots`` running
    backend_ttft_p99_s: float  # the backend's own p99 TTFT with ``base_slots`` running (FCFS)


def size(
    model: TimingModel,
    trace: Sequence[TraceRequest],
    plans: Mapping[str, Plan],
    *,
    ttft_share: float = 0.5,
    headroom: float = 0.5,
    requests: int = 4000,
) -> Sizing:
    """Size the pool on a sample of this trace.

    ``base_slots`` is the largest concurrency at which the backend, kept full by one class in
    first-come order, gives 99% of requests their first token within ``ttft_share`` of the
    tightest TTFT SLO of any plan (:func:`~lamplighter.simulation.gpu.largest_concurrency`).
    The classes above the lowest may fill ``headroom`` more (up to the backend's
    ``max_num_seqs``): they carry their priority into the backend, so a burst of them does not
    queue behind the prompts of the lowest class. The capacity is measured with ``slots``
    running."""
    probe = Engine(model)
    shapes = [
        (r.prompt_tokens, r.output_tokens)
        for r in sample(trace, requests)
        if probe.fits(r.prompt_tokens, r.output_tokens) is None
    ]
    tightest = min(plan.ttft_slo_s for plan in plans.values())
    base = largest_concurrency(model, shapes, ttft_share * tightest)
    slots = min(model.max_num_seqs, base.concurrency + round(headroom * base.concurrency))
    full = base if slots == base.concurrency else saturate(model, shapes, slots)
    return Sizing(
        slots=slots,
        base_slots=base.concurrency,
        capacity_tokens_per_s=full.throughput_tokens_per_s,
        backend_ttft_p99_s=base.ttft_p99_s,
    )


# -- the replay ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Record:
    """What happened to one request, from the requester's side."""

    arrival: Arrival
    output_tokens: int = 0  # what it will generate if it runs (after any max_tokens cap)
    outcome: str | None = None  # "completed" | "shed" | "abandoned"
    rate_limited: bool = False
    answered: bool = False  # its first token reached a person still waiting
    gave_up: bool = False
    first_token_at: float | None = None
    ended_at: float | None = None  # generation finished or was aborted
    generated: int = 0

    def resolve(self, outcome: str) -> None:
        if self.outcome is not None:
            raise RuntimeError(f"request {self.arrival.id} ended twice")
        self.outcome = outcome


class Replay:
    """The virtual-time event loop both policies share: arrivals, timers (give-ups, deadlines)
    and engine steps, in time order; on ties a finished step comes first (a token that arrives
    exactly at a deadline is in time)."""

    name = "replay"

    def __init__(
        self,
        arrivals: Sequence[Arrival],
        model: TimingModel,
        scheduling_policy: SchedulingPolicy = "fcfs",
    ) -> None:
        self.arrivals = arrivals
        self.engine = Engine(model, scheduling_policy)
        self.records = {a.id: Record(a) for a in arrivals}
        self._timers: list[tuple[float, int, int]] = []

    def run(self) -> list[Record]:
        for arrival in self.arrivals:
            self.timer(arrival.at + arrival.patience_s, arrival.id, kind=GIVE_UP)
        engine = self.engine
        batch = None
        index = 0
        timers = self._timers
        while True:
            next_arrival = self.arrivals[index].at if index < len(self.arrivals) else math.inf
            next_timer = timers[0][0] if timers else math.inf
            next_step = batch.ends if batch is not None else math.inf
            now = min(next_arrival, next_timer, next_step)
            if now == math.inf:
                break
            if batch is not None and next_step <= now:
                step = engine.complete(batch)
                batch = None
                for request in step.first:
                    self._first_token(self.records[request.id], now)
                for request in step.finished:
                    record = self.records[request.id]
                    record.generated = request.generated
                    record.ended_at = now
                    if record.answered:
                        record.resolve("completed")
                    self.finished(record, now)
            elif next_timer <= now:
                _, kind, request_id = heapq.heappop(timers)
                record = self.records[request_id]
                if kind == GIVE_UP:
                    if record.outcome is None and not record.answered:
                        record.gave_up = True
                        record.resolve("abandoned")
                        self.give_up(record, now)
                else:
                    self.deadline(record, now)
            else:
                self.arrive(self.records[self.arrivals[index].id], now)
                index += 1
            if batch is None and engine.has_work:
                batch = engine.schedule(now)
        unresolved = [r.arrival.id for r in self.records.values() if r.outcome is None]
        if unresolved:
            raise RuntimeError(f"requests never ended: {unresolved[:10]}")
        return list(self.records.values())

    def timer(self, when: float, request_id: int, *, kind: int = DEADLINE) -> None:
        heapq.heappush(self._timers, (when, kind, request_id))

    def refuse(self, record: Record, *, rate_limited: bool = False) -> None:
        """A 429 or 503 is sent; it counts if the person is still there to read it."""
        record.rate_limited = rate_limited
        if not record.gave_up:
            record.resolve("shed")

    def start(self, record: Record, now: float) -> None:
        arrival = record.arrival
        self.engine.add(
            Request(
                arrival.id,
                arrival.prompt_tokens,
                record.output_tokens,
                arrived=now,
                priority=self.priority(record),
            )
        )

    def stop(self, record: Record, now: float) -> bool:
        """Abort a request in the engine; True if it was there."""
        request = self.engine.abort(record.arrival.id)
        if request is None:
            return False
        record.generated = request.generated
        record.ended_at = now
        return True

    def _first_token(self, record: Record, now: float) -> None:
        record.first_token_at = now
        if not record.gave_up:
            record.answered = True

    # Hooks for the policies.
    def arrive(self, record: Record, now: float) -> None:
        raise NotImplementedError

    def priority(self, record: Record) -> int:
        """The priority the request carries to the backend (lower first)."""
        return 0

    def give_up(self, record: Record, now: float) -> None:
        """The person left without an answer (the record is already ``abandoned``)."""

    def deadline(self, record: Record, now: float) -> None:
        """A timer set with :meth:`timer` went off."""

    def finished(self, record: Record, now: float) -> None:
        """The engine finished generating for ``record``."""


class Fifo(Replay):
    """A plain proxy: everything goes to the backend's FIFO queue; disconnects abort."""

    name = "fifo"

    def arrive(self, record: Record, now: float) -> None:
        arrival = record.arrival
        record.output_tokens = arrival.output_tokens
        if self.engine.fits(arrival.prompt_tokens, record.output_tokens) is not None:
            self.refuse(record)  # the backend answers 400 at once
            return
        self.start(record, now)

    def give_up(self, record: Record, now: float) -> None:
        if record.arrival.disconnects:
            self.stop(record, now)


class Limits:
    """A plan's rate limits per user, as :class:`RateLimiter` keeps them, in virtual time: one
    request and ``prompt + max_tokens`` tokens reserved in each bucket at once, the unused tokens
    given back at the end, and a cap on concurrent streams."""

    def __init__(self) -> None:
        self.tat: dict[str, float] = {}
        self.streams: dict[str, int] = {}

    def reserve(self, user: str, plan: Plan, tokens: int, now: float) -> bool:
        if self.streams.get(user, 0) >= plan.concurrent_streams:
            return False
        limits = RateLimiter.limits(plan, user, tokens)
        verdicts = [check(lim.rate, self.tat.get(lim.key), now, lim.cost) for lim in limits]
        if not all(verdict.allowed for verdict in verdicts):
            return False
        for lim, verdict in zip(limits, verdicts, strict=True):
            self.tat[lim.key] = verdict.tat
        self.streams[user] = self.streams.get(user, 0) + 1
        return True

    def settle(self, user: str, plan: Plan, reserved: int, used: int, now: float) -> None:
        _, tokens, daily = RateLimiter.limits(plan, user, reserved)
        unused = max(0, reserved - used)
        for lim in (tokens, daily):
            tat = self.tat.get(lim.key)
            if tat is not None:
                self.tat[lim.key] = refund(lim.rate, tat, now, unused)
        self.streams[user] -= 1


class Lamplighter(Replay):
    """Rate limits, then the admission scheduler over the pool's slots, in front of the same
    backend. See the module docstring for the deadlines, headroom and degrade rules."""

    name = "lamplighter"

    def __init__(
        self,
        arrivals: Sequence[Arrival],
        model: TimingModel,
        plans: Mapping[str, Plan],
        sizing: Sizing,
        degrade: Sequence[DegradeRule] = (),
    ) -> None:
        # Lamplighter passes the plan's priority on; the backend runs vLLM's priority policy.
        super().__init__(arrivals, model, "priority")
        self.plans = plans
        self.sizing = sizing
        self.degrade = degrade
        extra = sizing.slots - sizing.base_slots
        lowest = max(plan.priority for plan in plans.values())
        self.scheduler = Scheduler(
            slots=sizing.slots, reserved={lowest: extra} if extra > 0 else {}
        )
        self.limits = Limits()
        self.reserved: dict[int, int] = {}

    def arrive(self, record: Record, now: float) -> None:
        arrival = record.arrival
        plan = self.plans[arrival.plan]
        granted = plan.max_tokens
        # As the server does: the first matching rule, by the number of requests queued.
        rule = degradation(self.degrade, plan.name, len(self.scheduler.waiting))
        if rule is not None and rule.max_tokens is not None:
            granted = min(granted, rule.max_tokens)
        record.output_tokens = min(arrival.output_tokens, granted)
        if self.engine.fits(arrival.prompt_tokens, record.output_tokens) is not None:
            self.refuse(record)
            return
        cost = arrival.prompt_tokens + granted
        if not self.limits.reserve(arrival.user, plan, cost, now):
            self.refuse(record, rate_limited=True)
            return
        self.reserved[arrival.id] = cost
        # The latest start that can still meet the SLO, within the plan's queue patience.
        slack = max(0.0, plan.ttft_slo_s - self.sizing.backend_ttft_p99_s)
        deadline = now + min(plan.queue_patience_s, slack)
        ticket = Ticket(arrival.id, arrival.user, plan.priority, cost, now, deadline)
        refusal = self.scheduler.submit(ticket, now)
        if refusal is not None:
            self._settle(record, now)
            self.refuse(record)
            return
        self.timer(deadline + 1e-9, arrival.id)
        self._dispatch(now)

    def priority(self, record: Record) -> int:
        return self.plans[record.arrival.plan].priority

    def deadline(self, record: Record, now: float) -> None:
        self._dispatch(now)

    def give_up(self, record: Record, now: float) -> None:
        if not record.arrival.disconnects:
            return  # the server cannot know; the request stays where it is
        request_id = record.arrival.id
        if self.scheduler.cancel(request_id):
            self._settle(record, now)
        elif self.stop(record, now):
            self._release(record, now)

    def finished(self, record: Record, now: float) -> None:
        self._release(record, now)

    def _release(self, record: Record, now: float) -> None:
        used = record.arrival.prompt_tokens + record.generated
        self.scheduler.finish(record.arrival.id, used, now)
        self._settle(record, now, used - record.arrival.prompt_tokens)
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        started, refused = self.scheduler.schedule(now)
        for ticket in started:
            self.start(self.records[ticket.id], now)
        for refusal in refused:
            record = self.records[refusal.ticket.id]
            self._settle(record, now)
            self.refuse(record)

    def _settle(self, record: Record, now: float, generated: int = 0) -> None:
        arrival = record.arrival
        reserved = self.reserved.pop(arrival.id)
        plan = self.plans[arrival.plan]
        self.limits.settle(arrival.user, plan, reserved, arrival.prompt_tokens + generated, now)


# -- metrics -------------------------------------------------------------------------------------


def summarize(
    records: Sequence[Record],
    plans: Mapping[str, Plan],
    capacity_tokens_per_s: float,
    window: tuple[float, float],
) -> dict[str, Any]:
    """The per-policy result ``R`` of the benchmark's JSON (see the module docstring)."""
    start, end = window
    length = max(end - start, 1e-9)
    in_window = 0.0
    good = 0.0
    wasted = 0
    generated = 0
    per_plan: dict[str, dict[str, Any]] = {}
    for name in sorted({r.arrival.plan for r in records}, key=_plan_order(plans)):
        mine = [r for r in records if r.arrival.plan == name]
        slo = plans[name].ttft_slo_s
        ttfts = sorted(
            r.first_token_at - r.arrival.at for r in mine if r.first_token_at is not None
        )
        met = [r for r in mine if r.outcome == "completed" and _ttft(r) <= slo]
        limited = sum(1 for r in mine if r.rate_limited)
        eligible = len(mine) - limited
        per_plan[name] = {
            "requests": len(mine),
            "completed": sum(1 for r in mine if r.outcome == "completed"),
            "slo_met": len(met),
            "slo_attainment": _round(len(met) / eligible if eligible else 1.0),
            "ttft_p50_s": _round(percentile(ttfts, 0.50)) if ttfts else None,
            "ttft_p99_s": _round(percentile(ttfts, 0.99)) if ttfts else None,
            "shed": sum(1 for r in mine if r.outcome == "shed"),
            "abandoned": sum(1 for r in mine if r.outcome == "abandoned"),
            "rate_limited": limited,
        }
        for record in mine:
            generated += record.generated
            if record.gave_up:
                wasted += record.generated
            share = _tokens_within(record, start, end)
            in_window += share
            if record.outcome == "completed" and _ttft(record) <= slo:
                good += share
    return {
        "plans": per_plan,
        "goodput_fraction": _round(good / (capacity_tokens_per_s * length)),
        "wasted_token_fraction": _round(wasted / generated if generated else 0.0),
        "utilization": _round(in_window / (capacity_tokens_per_s * length)),
        "silent_timeouts": sum(1 for r in records if r.outcome == "abandoned"),
    }


def _ttft(record: Record) -> float:
    return math.inf if record.first_token_at is None else record.first_token_at - record.arrival.at


def _tokens_within(record: Record, start: float, end: float) -> float:
    """The share of a request's tokens generated inside [start, end], taking them as evenly
    spread between its first token and the end of its generation."""
    first, last = record.first_token_at, record.ended_at
    if first is None or last is None or record.generated == 0:
        return 0.0
    if last <= first:
        return float(record.generated) if start <= first <= end else 0.0
    overlap = max(0.0, min(last, end) - max(first, start))
    return record.generated * overlap / (last - first)


def _plan_order(plans: Mapping[str, Plan]) -> Callable[[str], tuple[int, str]]:
    return lambda name: (-plans[name].priority, name)


def _round(value: float) -> float:
    return round(value, 4)


# -- the benchmark -------------------------------------------------------------------------------


class Surge:
    """One trace, sized once, replayed at any overload."""

    def __init__(self, trace: Sequence[TraceRequest], config: Config | None = None) -> None:
        if len(trace) < 2:
            raise ValueError("a surge needs a trace of at least two requests")
        self.trace = trace
        self.config = config or Config()
        unknown = {name for name, _ in self.config.population.plans} | set(
            self.config.population.heavy_users
        )
        unknown -= set(self.config.plans)
        if unknown:
            raise ValueError(f"the population uses unknown plans: {', '.join(sorted(unknown))}")
        self.sizing = size(
            self.config.model,
            trace,
            self.config.plans,
            ttft_share=self.config.ttft_share,
            headroom=self.config.headroom,
            requests=self.config.calibration_requests,
        )
        self.shape = describe(trace)

    def run(self, overload: float | None = None, seed: int | None = None) -> dict[str, Any]:
        """Both policies at one overload: the JSON object ``bench surge --json`` prints."""
        config = self.config
        overload = config.overload if overload is None else overload
        seed = config.seed if seed is None else seed
        if overload <= 0:
            raise ValueError("overload must be positive")
        capacity = self.sizing.capacity_tokens_per_s
        speedup = overload * capacity / self.shape.output_tokens_per_s
        arrivals = lay_over(self.trace, speedup, config.population, seed)
        window = (arrivals[0].at, arrivals[-1].at)
        replays: list[Replay] = [
            Fifo(arrivals, config.model),
            Lamplighter(arrivals, config.model, config.plans, self.sizing, config.degrade),
        ]
        policies = {
            replay.name: summarize(replay.run(), config.plans, capacity, window)
            for replay in replays
        }
        return {
            "overload": overload,
            "capacity_tokens_per_s": round(capacity, 1),
            "policies": policies,
            "setup": {
                "model": config.model.name,
                "slots": self.sizing.slots,
                "base_slots": self.sizing.base_slots,
                "backend_ttft_p99_s": _round(self.sizing.backend_ttft_p99_s),
                "requests": len(arrivals),
                "window_s": round(window[1] - window[0], 2),
                "speedup": _round(speedup),
                "seed": seed,
            },
        }

    def sweep(
        self,
        overloads: Sequence[float] = SWEEP,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        results = []
        for overload in overloads:
            result = self.run(overload)
            if progress is not None:
                progress(result)
            results.append(result)
        return results


def bench(
    trace: Sequence[TraceRequest],
    *,
    overload: float = 3.0,
    seed: int = 0,
    sweep: bool = False,
    model: TimingModel = H100,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """What ``lamplighter bench surge`` prints: one run, or ``{"capacity_tokens_per_s",
    "sweep": [run, ...]}`` over :data:`SWEEP`."""
    surge = Surge(trace, Config(overload=overload, seed=seed, model=model))
    if not sweep:
        result = surge.run()
        if progress is not None:
            progress(result)
        return result
    runs = surge.sweep(SWEEP, progress)
    return {"capacity_tokens_per_s": runs[0]["capacity_tokens_per_s"], "sweep": runs}


def render(result: dict[str, Any]) -> str:
    """A table for people (``bench surge`` without ``--json``)."""
    runs = result.get("sweep", [result])
    lines = []
    for run in runs:
        setup = run["setup"]
        lines.append(
            f"overload {run['overload']:g}x of {run['capacity_tokens_per_s']:.0f} output tokens/s "
            f"({setup['model']}, {setup['slots']} slots, {setup['requests']} requests in "
            f"{setup['window_s']:.0f} s)"
        )
        lines.append(
            f"  {'policy':<12}{'plan':<6}{'requests':>9}{'done':>7}{'in SLO':>8}{'attain':>8}"
            f"{'ttft p50':>10}{'ttft p99':>10}{'shed':>7}{'gave up':>8}"
        )
        for name, policy in run["policies"].items():
            for plan, row in policy["plans"].items():
                p50 = "-" if row["ttft_p50_s"] is None else f"{row['ttft_p50_s']:.2f}s"
                p99 = "-" if row["ttft_p99_s"] is None else f"{row['ttft_p99_s']:.2f}s"
                lines.append(
                    f"  {name:<12}{plan:<6}{row['requests']:>9}{row['completed']:>7}"
                    f"{row['slo_met']:>8}{row['slo_attainment']:>8.3f}{p50:>10}{p99:>10}"
                    f"{row['shed']:>7}{row['abandoned']:>8}"
                )
            lines.append(
                f"  {name:<12}goodput {policy['goodput_fraction']:.3f}  wasted "
                f"{policy['wasted_token_fraction']:.3f}  utilization {policy['utilization']:.3f}"
                f"  silent timeouts {policy['silent_timeouts']}"
            )
        lines.append("")
    return "\n".join(lines)
