"""The admission queue: priority, fairness, capacity and patience hold over any sequence of
events (hypothesis drives thousands of steps on a fake clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.traffic.scheduler import Scheduler, Ticket

events = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.sampled_from(["ann", "bob", "cat", "dan"]),
            st.integers(0, 2),
            st.integers(1, 400),
            st.floats(0, 20),
        ),
        st.tuples(st.just("finish"), st.integers(0, 50), st.integers(0, 400)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0, 5)),
    ),
    max_size=120,
)


@settings(max_examples=300)
@given(st.integers(1, 4), events)
def test_invariants_hold_over_any_sequence(slots: int, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    scheduler = Scheduler(slots=slots)
    now, next_id = 0.0, 0
    cancelled: set[int] = set()
    started_ids: set[int] = set()
    for step in steps:
        if step[0] == "submit":
            _, user, priority, cost, patience = step
            ticket = Ticket(next_id, user, priority, cost, now, now + patience)
            next_id += 1
            refusal = scheduler.submit(ticket, now)
            if refusal is not None:
                assert refusal.retry_after > 0
                assert ticket.id not in scheduler.waiting
        elif step[0] == "finish":
            running = sorted(scheduler.running)
            if running:
                scheduler.finish(running[step[1] % len(running)], step[2], now)
        elif step[0] == "cancel":
            waiting = sorted(scheduler.waiting)
            if waiting:
                victim = waiting[step[1] % len(waiting)]
                assert scheduler.cancel(victim)
                cancelled.add(victim)
        else:
            now += step[1]
        before = dict(scheduler.waiting)
        counters = dict(scheduler.counters)
        started, refused = scheduler.schedule(now)
        for refusal in refused:
            assert refusal.ticket.deadline < now  # only the impatient are refused
        for position, ticket in enumerate(started):
            assert ticket.id not in cancelled
            assert ticket.deadline >= now  # nothing starts after its requester gave up
            assert ticket.id not in started_ids
            started_ids.add(ticket.id)
            del before[ticket.id]
            # Strict priority: nothing still waiting (and not expired) outranks what started.
            live = [t for t in before.values() if t.deadline >= now]
            assert all(t.priority >= ticket.priority for t in live)
            # Fairness inside the class: the started user had the smallest counter of those
            # waiting in its class (counters as they stood when the choice was made).
            if position == 0:
                same_class = [t for t in live if t.priority == ticket.priority]
                assert all(
                    counters.get(ticket.user, 0) <= counters.get(t.user, 0) for t in same_class
                )
        assert len(scheduler.running) <= slots
        assert not scheduler.waiting or scheduler.free == 0


def test_a_light_user_is_not_crowded_out_by_a_heavy_one() -> None:
    scheduler = Scheduler(slots=1)
    for i in range(20):
        scheduler.submit(Ticket(i, "heavy", 2, 500, 0.0, 1e9), 0.0)
    (first,), _ = scheduler.schedule(0.0)
    for i in range(100, 103):
        scheduler.submit(Ticket(i, "light", 2, 500, 0.1, 1e9), 0.1)
    order = [first.user]
    for step in range(1, 8):
        scheduler.finish(next(iter(scheduler.running)), 500, float(step))
        (started,), _ = scheduler.schedule(float(step))
        order.append(started.user)
    # The light user's requests interleave with the heavy backlog instead of waiting behind
    # all twenty of them.
    assert order == ["heavy", "heavy", "light", "heavy", "light", "heavy", "light", "heavy"]


def test_paying_plans_start_first_and_free_users_share() -> None:
    scheduler = Scheduler(slots=2)
    for i, (user, priority) in enumerate([("f1", 2), ("f1", 2), ("f2", 2), ("t1", 0), ("p1", 1)]):
        scheduler.submit(Ticket(i, user, priority, 100, float(i), 1e9), float(i))
    started, _ = scheduler.schedule(10.0)
    assert [t.user for t in started] == ["t1", "p1"]
    for ticket in started:
        scheduler.finish(ticket.id, 100, 20.0)
    started, _ = scheduler.schedule(20.0)
    assert sorted(t.user for t in started) == ["f1", "f2"]  # one each, not both of f1's


def test_requests_that_cannot_start_in_time_are_refused_at_once() -> None:
    scheduler = Scheduler(slots=1)
    scheduler.submit(Ticket(0, "a", 2, 10, 0.0, 100.0), 0.0)
    scheduler.schedule(0.0)
    scheduler.finish(0, 10, 4.0)  # a request holds the slot for about 4 s
    scheduler.submit(Ticket(1, "a", 2, 10, 4.0, 100.0), 4.0)
    scheduler.schedule(4.0)
    for i in range(2, 5):
        assert scheduler.submit(Ticket(i, "b", 2, 10, 4.0, 100.0), 4.0) is None
    refusal = scheduler.submit(Ticket(9, "c", 2, 10, 4.0, 4.0 + 5.0), 4.0)
    assert refusal is not None and refusal.retry_after > 5.0


def _busy(slots: int, service: float) -> Scheduler:
    """A pool whose every slot is taken, each request having held its slot ``service`` s."""
    scheduler = Scheduler(slots=slots)
    for i in range(slots):
        scheduler.submit(Ticket(-1 - i, "warm", 2, 10, 0.0, 1e9), 0.0)
    scheduler.schedule(0.0)
    for i in range(slots):
        scheduler.finish(-1 - i, 10, service)
    for i in range(slots):
        scheduler.submit(Ticket(-100 - i, "warm", 2, 10, service, 1e9), service)
    scheduler.schedule(service)
    assert scheduler.free == 0 and scheduler.mean_service == service
    return scheduler


def _paid_arrivals(scheduler: Scheduler, per_second: float, start: float, end: float) -> None:
    """Team requests arriving steadily, each started at once as if a slot had freed for it
    (the pool stays full: what frees goes to them)."""
    n = round((end - start) * per_second)
    for i in range(n):
        at = start + i / per_second
        ticket = Ticket(1000 + i, f"team{i % 3}", 0, 10, at, at + 60)
        assert scheduler.submit(ticket, at) is None
        scheduler.waiting.pop(ticket.id)  # started elsewhere: only its arrival counts here
        scheduler._count(scheduler._backlog, ticket.user, -1)


@settings(max_examples=200)
@given(st.integers(1, 8), st.floats(0.2, 5.0), st.floats(1.5, 3.0), st.floats(0.5, 120.0))
def test_a_free_request_is_refused_at_once_while_paid_ones_take_every_slot(
    slots: int, service: float, overload: float, patience: float
) -> None:
    """Paid requests arriving faster than slots free (``overload`` times that, for five
    horizons) leave none for a free one, however long its patience: it is refused at once, and
    told to come back after the scheduler's horizon, not after an interval that would only
    refuse it again. A paid request only waits for what is queued ahead of it."""
    scheduler = _busy(slots, service)
    now = service + 5 * scheduler.horizon_s
    _paid_arrivals(scheduler, overload * slots / service, service, now)
    assert scheduler.expected_wait(Ticket(1, "f", 2, 10, now, now + patience), now) == math.inf
    refusal = scheduler.submit(Ticket(2, "free", 2, 10, now, now + patience), now)
    assert refusal is not None and refusal.retry_after == scheduler.horizon_s
    assert scheduler.expected_wait(Ticket(3, "t", 0, 10, now, now + 1), now) < math.inf


@settings(max_examples=200)
@given(st.integers(1, 8), st.floats(0.2, 10.0), st.floats(0.0, 0.95), st.integers(1, 20))
def test_the_more_better_classes_arrive_the_longer_a_worse_one_expects_to_wait(
    slots: int, service: float, load: float, more: int
) -> None:
    """Without paid arrivals a free request expects the plain estimate (half a slot's
    interval); each paid arrival more makes its expected wait longer, never shorter."""
    scheduler = _busy(slots, service)
    free = Ticket(1, "free", 2, 10, service, 1e9)
    assert scheduler.expected_wait(free, service) == pytest.approx(0.5 * service / slots)
    end = service + 2 * scheduler.horizon_s
    _paid_arrivals(scheduler, load * slots / service, service, end)
    waits = [scheduler.expected_wait(free, end)]
    for i in range(more):
        ticket = Ticket(5000 + i, "team", 0, 10, end, 1e9)
        assert scheduler.submit(ticket, end) is None
        waits.append(scheduler.expected_wait(free, end))
    assert all(w is not None for w in waits) and waits == sorted(waits)  # type: ignore[type-var]


def test_before_any_request_has_finished_the_running_ones_give_the_estimate() -> None:
    """Just after a restart under paid load nothing has finished yet: the requests running for
    6 s say a request holds a slot for about 12, so a free request with 4 s of patience behind
    waiting team requests is refused at once instead of waiting them out. An idle pool takes
    it at once."""
    idle = Scheduler(slots=2)
    assert idle.submit(Ticket(0, "free", 2, 10, 0.0, 4.0), 0.0) is None

    scheduler = Scheduler(slots=2)
    for i in range(2):
        assert scheduler.submit(Ticket(i, f"team{i}", 0, 10, 0.0, 1e9), 0.0) is None
    started, _ = scheduler.schedule(0.0)
    assert len(started) == 2 and scheduler.mean_service is None
    for i in range(2, 5):
        assert scheduler.submit(Ticket(i, f"team{i}", 0, 10, 6.0, 1e9), 6.0) is None
    refusal = scheduler.submit(Ticket(9, "free", 2, 10, 6.0, 10.0), 6.0)
    assert refusal is not None and refusal.retry_after > 4.0


def test_a_request_that_waited_out_its_patience_is_told_an_honest_wait() -> None:
    """Queued before the paid surge, a free request waits out its patience; its refusal says
    to come back after the horizon, not after one service time."""
    scheduler = _busy(1, 2.0)
    assert scheduler.submit(Ticket(1, "free", 2, 10, 2.0, 6.0), 2.0) is None
    _paid_arrivals(scheduler, 2.0, 2.0, 6.0)  # four times as fast as the slot frees
    _, refused = scheduler.schedule(6.5)
    assert [r.ticket.id for r in refused] == [1]
    assert refused[0].retry_after == scheduler.horizon_s


def test_idle_users_bank_no_credit() -> None:
    scheduler = Scheduler(slots=1)
    scheduler.counters["busy"] = 10_000.0
    scheduler.submit(Ticket(0, "busy", 2, 10, 0.0, 1e9), 0.0)
    scheduler.submit(Ticket(1, "returning", 2, 10, 0.0, 1e9), 0.0)
    assert scheduler.counters["returning"] == 10_000.0
