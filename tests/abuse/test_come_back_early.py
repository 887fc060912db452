"""What counts as coming back early, on a fake clock: a request on its way before a refusal was
sent never does; each refusal answers for one request that waited for it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.abuse.violations import ViolationPolicy, Violations

COUNT = ViolationPolicy(threshold=1e9, half_life_s=1e12)  # no decay, no ban: a count


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_requests_sent_together_are_not_scored_for_the_refusals_they_crossed() -> None:
    clock = Clock()
    scores = Violations(COUNT, clock)
    sent_at = clock.now
    for _ in range(16):  # refused one after another, all on their way before the first refusal
        clock.now += 0.01
        scores.record("concurrency", "user:a", retry_after=1.0, arrived=sent_at)
    assert scores.score("user:a") == 0
    clock.now += 0.01  # sent after the refusals, long before their second was over
    scores.record("concurrency", "user:a", retry_after=1.0)
    assert scores.score("user:a") == 2


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 30),
    st.lists(st.floats(0, 0.5), min_size=30, max_size=30),
    st.integers(1, 4),
)
def test_callers_that_each_wait_as_told_are_never_scored(
    callers: int, delays: list[float], rounds: int
) -> None:
    """``callers`` retry loops of one program, each refused and waiting its own retry-after
    (plus up to half a second of its own), in whatever order their refusals interleave."""
    clock = Clock()
    scores = Violations(COUNT, clock)
    start = clock.now
    # (arrival, caller): all on their way at once, then each back when its refusal said.
    pending = sorted((start + i * 1e-4, i) for i in range(callers))
    for _ in range(rounds * callers):
        arrival, caller = pending.pop(0)
        clock.now = max(clock.now, arrival) + 0.005  # refused a moment after it arrived
        scores.record("concurrency", "user:a", retry_after=1.0, arrived=arrival)
        pending.append((clock.now + 1.0 + delays[caller], caller))
        pending.sort()
    assert scores.score("user:a") == 0
