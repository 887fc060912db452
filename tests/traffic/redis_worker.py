"""A replica in a process of its own, for tests/traffic/test_redis_state.py.

python -m tests.traffic.redis_worker hammer URL PREFIX ATTEMPTS
    waits for the go signal, then reserves ``LIMITS`` ATTEMPTS times; prints how many were
    allowed.
python -m tests.traffic.redis_worker hold URL PREFIX KEY MOST LEASE_TTL
    takes a stream slot of KEY, prints "held", and keeps it (renewing) until killed.
"""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from lamplighter.traffic.limiters import Rate
from lamplighter.traffic.redis_state import RedisState
from lamplighter.traffic.state import Limit, TrafficState

DAY = 86_400.0
# 100 requests and 500 tokens a day (nothing refills during a test): at 7 tokens a request,
# exactly 71 requests fit, whoever sends them.
LIMITS = (
    Limit("hammered:requests", "requests", Rate(100, DAY), 1),
    Limit("hammered:tokens", "tokens", Rate(500, DAY), 7),
)


async def take_slot(state: TrafficState, key: str, most: int) -> str | None:
    """One of ``most`` concurrent-stream slots for ``key`` and no limit: its lease, or None."""
    return (await state.reserve([], 0.0, (key, most))).lease


async def give_back_slot(state: TrafficState, key: str, lease: str) -> None:
    await state.settle([], 0.0, (key, lease))


def go_key(prefix: str) -> str:
    return f"{prefix}go"


async def hammer(url: str, prefix: str, attempts: int) -> None:
    signal = Redis.from_url(url)
    async with RedisState(url, prefix=prefix, timeout=5.0) as state:
        # Every worker blocks here until the test releases them all at once.
        await signal.blpop([go_key(prefix)], timeout=30)
        await signal.aclose()
        allowed = 0
        for _ in range(attempts):
            allowed += (await state.reserve(LIMITS, 0.0)).granted
    print(allowed, flush=True)


async def hold(url: str, prefix: str, key: str, most: int, lease_ttl: float) -> None:
    async with RedisState(url, prefix=prefix, lease_ttl=lease_ttl, timeout=5.0) as state:
        if await take_slot(state, key, most) is None:
            raise SystemExit("no free slot")
        print("held", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    command, url, prefix, *rest = argv
    if command == "hammer":
        asyncio.run(hammer(url, prefix, int(rest[0])))
    elif command == "hold":
        asyncio.run(hold(url, prefix, rest[0], int(rest[1]), float(rest[2])))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
