"""The asyncio side of admission: headroom kept for paying plans, and priority forwarding."""

from __future__ import annotations

import asyncio

import pytest

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import GenerationRequest, PreparedRequest
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.exceptions import ConfigError
from lamplighter.traffic.admission import Admission, headroom_from_config
from lamplighter.traffic.clock import ManualClock
from lamplighter.traffic.plans import DEFAULT_PLANS

FREE, TEAM = DEFAULT_PLANS["free"], DEFAULT_PLANS["team"]


async def test_free_traffic_cannot_take_the_headroom_kept_for_paying_plans() -> None:
    admission = Admission(ManualClock(), headroom_from_config({"2": 0.34}))
    pool = admission.pool("gpu", 3)
    first = await pool.enter("f1", FREE, 10)
    second = await pool.enter("f2", FREE, 10)
    third = asyncio.create_task(pool.enter("f3", FREE, 10))
    await asyncio.sleep(0)
    assert not third.done() and pool.queued == 1  # the last slot is kept back
    team = await asyncio.wait_for(pool.enter("t1", TEAM, 10), timeout=5)  # and team gets it
    first.release(10)
    await asyncio.sleep(0)
    assert not third.done()  # one free slot, but it is the one kept for paying plans
    team.release(10)
    slot = await asyncio.wait_for(third, timeout=5)
    for held in (second, slot):
        held.release(10)
    assert pool.utilization == 0


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ({"free": 0.3}, "the key 'free' is no priority: keys are plans' priorities, whole number"),
        ({"-1": 0.3}, "the key '-1' is no priority"),
        ({"2": 1.0}, "the share for priority 2 must be a number at least 0 and below 1, not 1.0"),
        ({"2": -0.1}, "the share for priority 2 must be"),
        ({"2": "0.3"}, "not '0.3'"),
        ({"2": True}, "not True"),
        (0.3, "[traffic] headroom must be a table of priorities to shares"),
    ],
)
def test_bad_headroom_is_refused_saying_what_it_must_be(table: object, said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        headroom_from_config(table)
    assert said in str(refused.value)


async def test_the_plan_priority_reaches_a_priority_scheduling_backend() -> None:
    request = GenerationRequest(model="m", turns=(Turn("user", "hi"),), priority=2)
    prepared = PreparedRequest(request=request, prompt_tokens=5, max_tokens=10)
    plain = UpstreamBackend(UpstreamConfig(name="a", url="http://127.0.0.1:9/v1", models=("m",)))
    ranked = UpstreamBackend(
        UpstreamConfig(name="b", url="http://127.0.0.1:9/v1", models=("m",), send_priority=True)
    )
    try:
        assert "priority" not in plain._body(prepared)
        assert ranked._body(prepared)["priority"] == 2
    finally:
        await plain.close()
        await ranked.close()
