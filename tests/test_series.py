"""The console's in-memory time series: bucketing, rates, quantiles and bounded memory."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from lamplighter.telemetry.series import Gauges, Series, quantile

IDLE = Gauges({}, {}, 0, 0, 0)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_quantile_is_an_observed_value_with_the_right_rank(values: list[float], q: float) -> None:
    found = quantile(values, q)
    assert found in values
    at_or_below = sum(v <= found for v in values)
    assert at_or_below >= math.ceil(q * len(values))
    assert sum(v < found for v in values) < max(1, math.ceil(q * len(values)))


def test_a_bucket_summarises_what_happened_in_it() -> None:
    series = Series(interval=5)
    for ttft in (0.1, 0.2, 0.3, 0.4, 2.0):
        series.exchange("free", "complete", ttft, tokens=10)
    series.exchange("plus", "error", None, tokens=0)
    series.refused("rate_limit_exceeded")
    series.refused("rate_limit_exceeded")
    series.refused("overloaded")
    point = series.close(100.0, Gauges({"gpu": 3}, {"gpu": 0.5}, 2, cache_hits=1, cache_misses=3))
    assert point["requests_per_s"] == 6 / 5
    assert point["tokens_per_s"] == 50 / 5
    assert point["error_rate"] == 1 / 6
    assert point["ttft_p50"] == {"free": 0.3}
    assert point["ttft_p99"] == {"free": 2.0}
    assert point["refusals"] == {"rate_limit_exceeded": 2, "overloaded": 1}
    assert point["queue_depth"] == {"gpu": 3} and point["utilization"] == {"gpu": 0.5}
    assert point["cache_hit_rate"] == 0.25

    quiet = series.close(105.0, Gauges({"gpu": 0}, {"gpu": 0.0}, 0, cache_hits=1, cache_misses=3))
    assert quiet["requests_per_s"] == 0 and quiet["error_rate"] is None
    assert quiet["cache_hit_rate"] is None  # no lookups in this bucket
    assert series.totals == {"requests": 6, "refusals": 3}


def test_since_returns_only_newer_points_and_memory_is_bounded() -> None:
    series = Series(interval=1, keep=10)
    for second in range(25):
        series.close(float(second), IDLE)
    assert [p["t"] for p in series.since()] == [float(s) for s in range(15, 25)]
    assert [p["t"] for p in series.since(22.0)] == [23.0, 24.0]
