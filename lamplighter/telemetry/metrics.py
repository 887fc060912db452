"""Prometheus metrics, named after the OpenTelemetry GenAI conventions where they exist
(``gen_ai.server.time_to_first_token`` becomes ``gen_ai_server_time_to_first_token_seconds``).

Labels are bounded: plan, model, backend, outcome, reason, token type, never a user. Each app has
its own registry, so two instances in one process (as in the tests) never share counters. Queue
depth, utilisation, active streams and cache counts are read from the live objects at scrape time
rather than kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lamplighter.telemetry.series import Gauges, Series

if TYPE_CHECKING:
    from lamplighter.chat import ChatService, Exchange
    from lamplighter.traffic.redis_state import RedisState

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
PER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
CIRCUIT_STATES = ("closed", "half_open", "open")
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, series: Series | None = None) -> None:
        self.series = series or Series()
        self._chat: ChatService | None = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lamplighter_requests",
            "Chat requests that reached generation, by how they ended "
            "(complete, cut, error; cached when the response cache answered).",
            ["plan", "model", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "lamplighter_refusals",
            "Chat requests refused before generation, by error code "
            "(rate_limit_exceeded, insufficient_quota, overloaded, ...).",
            ["plan", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "gen_ai_server_token_usage",
            "Tokens processed, by type (input: prompt, output: generated).",
            ["type", "model", "plan"],
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from receiving a request to its first generated token.",
            ["model", "plan"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.per_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per generated token after the first.",
            ["model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from receiving a request to its last token.",
            ["model", "plan"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.queue_wait = Histogram(
            "lamplighter_queue_wait_seconds",
            "Time a request waited for a backend slot (0 when one was free), admitted or not.",
            ["plan", "backend"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.admitted = Counter(
            "lamplighter_admitted",
            "Chat requests admitted to generation (or answered from the cache), by plan.",
            ["plan"],
            registry=r,
        )
        self.features = Counter(
            "lamplighter_request_features",
            "Admitted requests that asked for an API feature beyond text (tools, json_schema, "
            "json_object, logprobs, background), and answers that called tools (tool_calls).",
            ["feature"],
            registry=r,
        )
        self.left = Counter(
            "lamplighter_web_answers_left",
            "Web chat answers whose page went away while they were written, by how they ended: "
            "finished (the page came back, or it ended first), cut (nobody came back in time) "
            "or yielded (cut at once: a request waited for the backend).",
            ["outcome"],
            registry=r,
        )
        self.degraded = Counter(
            "lamplighter_degraded",
            "Requests served degraded under pressure (a shorter cap or a smaller model).",
            ["plan"],
            registry=r,
        )
        self.violations = Counter(
            "lamplighter_violations",
            "Refusals counted towards abuse scores, by kind.",
            ["kind"],
            registry=r,
        )
        self.bans = Counter(
            "lamplighter_bans",
            "Temporary bans started by violation scores, by subject (user or ip).",
            ["scope"],
            registry=r,
        )
        self.moderation = Counter(
            "lamplighter_moderation_flags",
            "Moderation flags, by direction (input, output), category and the plan's action.",
            ["direction", "category", "action"],
            registry=r,
        )
        self.findings = Counter(
            "lamplighter_abuse_findings",
            "Coordinated-abuse patterns found (prompt_flood, bot_timing, network_signups, "
            "disposable_email), each filed for review.",
            ["kind"],
            registry=r,
        )
        self.routed = Counter(
            "lamplighter_routed",
            "Requests routed to a backend, by why it was chosen (affinity: it holds the "
            "conversation's prefix; least_loaded; only: the one candidate; overflow: the "
            "backend first chosen had no slot free, shared with other replicas, and this one "
            "had; failover: the backend first chosen failed before the first token).",
            ["backend", "reason"],
            registry=r,
        )
        self.failovers = Counter(
            "lamplighter_backend_failovers",
            "Requests moved off a backend that failed before their first token, or before the "
            "end of an answer not streamed.",
            ["backend"],
            registry=r,
        )
        self.discarded_tokens = Counter(
            "lamplighter_backend_discarded_tokens",
            "Tokens of answers not streamed that a backend failed to finish, generated again on "
            "another backend.",
            ["backend"],
            registry=r,
        )
        self.overflows = Counter(
            "lamplighter_backend_overflows",
            "Requests that found this backend's slots, shared with other replicas, all taken "
            "and started at once on another backend instead of queuing here.",
            ["backend"],
            registry=r,
        )
        self.feedback = Counter(
            "lamplighter_feedback",
            "Feedback given on answers, by kind (thumbs_up, thumbs_down).",
            ["kind"],
            registry=r,
        )

    def observe(self, exchange: Exchange, status: str, elapsed: float) -> None:
        """A settled exchange: count it, its tokens and its latencies."""
        plan, model = exchange.plan.name, exchange.model
        outcome = "cached" if exchange.cached and status == "complete" else status
        self.requests.labels(plan, model, outcome).inc()
        self.tokens.labels("input", model, plan).inc(exchange.prepared.prompt_tokens)
        self.tokens.labels("output", model, plan).inc(exchange.completion_tokens)
        self.duration.labels(model, plan).observe(elapsed)
        if exchange.ttft is not None:
            self.ttft.labels(model, plan).observe(exchange.ttft)
            if exchange.completion_tokens > 1:
                decode = (elapsed - exchange.ttft) / (exchange.completion_tokens - 1)
                self.per_token.labels(model).observe(max(0.0, decode))
        tokens = exchange.prepared.prompt_tokens + exchange.completion_tokens
        self.series.exchange(plan, outcome, exchange.ttft, tokens)

    def refused(self, plan: str, reason: str | None) -> None:
        self.refusals.labels(plan, reason or "unknown").inc()
        self.series.refused(reason or "unknown")

    def watch(self, chat: ChatService) -> None:
        """Expose the chat service's live state (queues, slots, streams, cache) on scrape."""
        self._chat = chat
        self.registry.register(_Live(lambda: chat))

    def watch_redis(self, state: RedisState) -> None:
        """Expose the shared traffic state's health on scrape: ``lamplighter_redis_up`` and
        ``lamplighter_redis_errors_total``."""
        self.registry.register(_Redis(state))

    def sample(self, now: float) -> dict[str, object]:
        """Close the console's current time-series bucket with the live gauges."""
        chat = self._chat
        pools = chat.admission.pools if chat else {}
        gauges = Gauges(
            queue_depth={name: pool.queued for name, pool in pools.items()},
            utilization={name: pool.utilization for name, pool in pools.items()},
            active_streams=len(chat.live) if chat else 0,
            cache_hits=chat.cache.hits if chat else 0,
            cache_misses=chat.cache.misses if chat else 0,
        )
        return self.series.close(now, gauges)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    def __init__(self, chat: Callable[[], ChatService]) -> None:
        self.chat = chat

    def collect(self) -> Iterator[Metric]:
        chat = self.chat()
        queued = GaugeMetricFamily(
            "lamplighter_queue_depth", "Requests waiting for a backend slot.", labels=["backend"]
        )
        busy = GaugeMetricFamily(
            "lamplighter_backend_utilization",
            "Share of a backend's declared capacity in use (0 to 1).",
            labels=["backend"],
        )
        for name, pool in chat.admission.pools.items():
            queued.add_metric([name], pool.queued)
            busy.add_metric([name], pool.utilization)
        yield queued
        yield busy
        yield GaugeMetricFamily(
            "lamplighter_active_streams", "Exchanges generating now.", value=len(chat.live)
        )
        up = GaugeMetricFamily(
            "lamplighter_backend_up",
            "1 when a backend is ready to serve, 0 when it is not.",
            labels=["backend"],
        )
        circuit = GaugeMetricFamily(
            "lamplighter_backend_circuit",
            "An upstream's circuit breaker: 0 closed, 1 half-open (one trial request), 2 open.",
            labels=["backend"],
        )
        load = GaugeMetricFamily(
            "lamplighter_backend_load",
            "The load an upstream publishes on its own /metrics, as a share of its capacity.",
            labels=["backend"],
        )
        for status in chat.router.status():
            up.add_metric([status.name], 1.0 if status.up else 0.0)
            if status.circuit is not None:
                circuit.add_metric([status.name], CIRCUIT_STATES.index(status.circuit))
            if status.load is not None:
                load.add_metric([status.name], status.load)
        yield up
        yield circuit
        yield load
        cache = CounterMetricFamily(
            "lamplighter_cache_lookups", "Response cache lookups, by result.", labels=["result"]
        )
        cache.add_metric(["hit"], chat.cache.hits)
        cache.add_metric(["miss"], chat.cache.misses)
        yield cache


class _Redis(Collector):
    def __init__(self, state: RedisState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "lamplighter_redis_up",
            "1 while the shared traffic state in Redis answers, 0 during an outage (limits then "
            "follow LAMPLIGHTER_REDIS_FAILURE).",
            value=1.0 if self.state.up else 0.0,
        )
        yield CounterMetricFamily(
            "lamplighter_redis_errors",
            "Calls to the shared traffic state in Redis that failed or timed out.",
            value=self.state.errors,
        )
