"""The last hour of the service's vital signs, in memory, for the operator console and
``lamplighter top``.

Prometheus keeps history for whoever runs one; the console must work without. Events (an
exchange settled, a request refused) are counted into the open bucket as they happen; every
``interval`` seconds the bucket is closed with a snapshot of the gauges (queues, utilisation,
streams, cache counters) and summarised into one point. Points older than ``keep`` buckets fall
off, so memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method (an observed value, never interpolated)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Gauges:
    """What the service looks like at the end of a bucket."""

    queue_depth: Mapping[str, int]
    utilization: Mapping[str, float]
    active_streams: int
    cache_hits: int  # running totals; the recorder takes differences
    cache_misses: int


@dataclass
class _Bucket:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    ttft: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class Series:
    def __init__(self, interval: float = 5.0, keep: int = 720) -> None:
        self.interval = interval
        self.points: deque[dict[str, Any]] = deque(maxlen=keep)
        self.totals: Counter[str] = Counter()
        self._open = _Bucket()
        self._cache = (0, 0)

    def exchange(self, plan: str, outcome: str, ttft: float | None, tokens: int) -> None:
        """An exchange settled (complete, cached, cut or error)."""
        bucket = self._open
        bucket.requests += 1
        bucket.tokens += tokens
        if outcome == "error":
            bucket.errors += 1
        if ttft is not None:
            bucket.ttft[plan].append(ttft)
        self.totals["requests"] += 1

    def refused(self, reason: str) -> None:
        self._open.refusals[reason] += 1
        self.totals["refusals"] += 1

    def close(self, now: float, gauges: Gauges) -> dict[str, Any]:
        """End the open bucket at ``now`` (unix seconds) and keep its summary."""
        bucket, self._open = self._open, _Bucket()
        hits = gauges.cache_hits - self._cache[0]
        lookups = hits + gauges.cache_misses - self._cache[1]
        self._cache = (gauges.cache_hits, gauges.cache_misses)
        point = {
            "t": round(now, 3),
            "requests_per_s": bucket.requests / self.interval,
            "tokens_per_s": bucket.tokens / self.interval,
            "error_rate": bucket.errors / bucket.requests if bucket.requests else None,
            "ttft_p50": {plan: quantile(v, 0.5) for plan, v in sorted(bucket.ttft.items())},
            "ttft_p99": {plan: quantile(v, 0.99) for plan, v in sorted(bucket.ttft.items())},
            "queue_depth": dict(gauges.queue_depth),
            "utilization": dict(gauges.utilization),
            "refusals": dict(bucket.refusals),
            "cache_hit_rate": hits / lookups if lookups else None,
            "active_streams": gauges.active_streams,
        }
        self.points.append(point)
        return point

    def since(self, t: float | None = None) -> list[dict[str, Any]]:
        """The kept points that end after ``t`` (all of them without), oldest first."""
        return [p for p in self.points if t is None or p["t"] > t]
