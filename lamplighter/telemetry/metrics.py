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

if TYPE_CHECKING:
    from lamplighter.chat import ChatService, Exchange

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
PER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    def __init__(self) -> None:
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

    def refused(self, plan: str, reason: str | None) -> None:
        self.refusals.labels(plan, reason or "unknown").inc()

    def watch(self, chat: ChatService) -> None:
        """Expose the chat service's live state (queues, slots, streams, cache) on scrape."""
        self.registry.register(_Live(lambda: chat))

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
        cache = CounterMetricFamily(
            "lamplighter_cache_lookups", "Response cache lookups, by result.", labels=["result"]
        )
        cache.add_metric(["hit"], chat.cache.hits)
        cache.add_metric(["miss"], chat.cache.misses)
        yield cache
