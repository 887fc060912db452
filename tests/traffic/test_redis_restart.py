"""After Redis restarts, the connections a replica kept from before are dead. Each used to fail
once, and each failure started a new outage: limits fell back to the replica's share again,
``lamplighter_redis_up`` flapped and the ERROR was logged again, seconds after recovery. (Found by
tests/test_scale_out.py's Redis restart; this is the same, in one process and in a second.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from lamplighter.traffic.limiters import Rate
from lamplighter.traffic.redis_state import RedisState
from lamplighter.traffic.state import Limit
from tests.fleet import RedisServer


async def test_once_redis_is_back_the_connections_from_before_start_no_new_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lamplighter.traffic.redis_state")
    limit = Limit("u:requests", "requests", Rate(1000, 60), 1)
    async with RedisState(redis_server.url, replicas=3) as state:
        # Ten calls at once: the pool keeps ten connections.
        await asyncio.gather(*(state.reserve([limit], 0.0) for _ in range(10)))
        redis_server.kill()
        await state.reserve([limit], 0.0)
        assert not state.up
        redis_server.start()
        redis_server.wait_up()
        for _ in range(100):
            if state.up:
                break
            await asyncio.sleep(0.05)
        assert state.up
        errors = state.errors
        for _ in range(3):
            verdicts = await asyncio.gather(*(state.reserve([limit], 0.0) for _ in range(10)))
            assert state.up and all(v.granted for v in verdicts)
        assert state.errors == errors
    levels = [r.levelno for r in caplog.records if r.name == "lamplighter.traffic.redis_state"]
    assert levels == [logging.ERROR, logging.WARNING]  # one outage, one recovery
