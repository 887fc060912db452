"""Fixtures shared by the traffic tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import REDIS_SERVER, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, up and answering; the test may stop and start it."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"no {REDIS_SERVER}")
    redis = RedisServer("redis", tmp_path)
    redis.start()
    redis.wait_up()
    yield redis
    redis.stop()
