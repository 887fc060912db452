"""Temporary bans across replicas when one replica loses Redis for a while (a network partition:
Redis keeps its data) and when Redis itself restarts empty. Two replicas here are each a real
bulletin and the abuse scores' bans, joined by ``guard.listen`` as the server joins them; one
reaches Redis through a proxy the test cuts."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from lamplighter.abuse.violations import Ban, Violations
from lamplighter.api import guard
from lamplighter.api.state import Services
from lamplighter.traffic.bulletin import PINNED, Bulletin
from tests.conftest import free_port
from tests.fleet import RedisServer


class Proxy:
    """A TCP relay to Redis that the test can cut (every connection dropped, new ones refused)
    and mend, as a network partition does to one replica."""

    def __init__(self, port: int) -> None:
        self.port, self.to = free_port(), port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Proxy:
        await self.mend()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            await self.cut()

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._links:
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.to)
        self._links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}


@dataclass
class Replica:
    bulletin: Bulletin
    violations: Violations

    @property
    def state(self) -> Services:  # the two parts of the server's services that bans use
        return cast(Services, self)

    def holds(self, subject: str) -> bool:
        return self.violations.banned(subject) is not None

    def start_ban(self, subject: str) -> Ban:
        """A ban the abuse scores started here, announced as the server announces it."""
        ban = Ban(subject, until=time.time() + 300, seconds=300, repeat=1, reason="flood")
        self.violations.impose(ban)
        guard.announce(self.state, [ban])
        return ban


@contextlib.asynccontextmanager
async def replica(url: str) -> AsyncIterator[Replica]:
    one = Replica(Bulletin(url), Violations())
    await guard.listen(one.state)
    await one.bulletin.start()
    try:
        await asyncio.wait_for(one.bulletin.subscribed.wait(), 10)
        yield one
    finally:
        await one.bulletin.stop()


Check = Callable[[], bool | Awaitable[bool]]


async def until(check: Check, what: str, seconds: float = 15) -> None:
    for _ in range(int(seconds / 0.02)):
        met = check()
        if await met if inspect.isawaitable(met) else met:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"waited {seconds} s for {what}")


async def pinned(url: str, subjects: set[str]) -> bool:
    """Whether the bans pinned in Redis are those of ``subjects``."""
    from redis.asyncio import Redis

    async with Redis.from_url(url, decode_responses=True) as redis:
        return set(await redis.hkeys(PINNED + "ban")) == subjects


async def test_after_a_partition_bans_lifted_and_started_on_either_side_hold_everywhere(
    redis_server: RedisServer,
) -> None:
    async with (
        Proxy(redis_server.port) as proxy,
        replica(proxy.url) as a,
        replica(redis_server.url) as b,
    ):
        a.start_ban("user:x")
        b.start_ban("user:z")
        await until(lambda: b.holds("user:x") and a.holds("user:z"), "each to hold both bans")

        await proxy.cut()  # a is away from Redis; Redis keeps everything
        await until(lambda: not a.bulletin.subscribed.is_set(), "a to lose its subscription")
        await guard.lift(a.state, "user:x")  # an admin's restore on a: not heard by b
        await guard.lift(b.state, "user:z")  # and one on b: not heard by a
        b.start_ban("user:y")
        a.start_ban("user:w")  # an abuser caught on a meanwhile
        assert b.holds("user:x") and a.holds("user:z") and not a.holds("user:y")

        await proxy.mend()
        for one in (a, b):
            await until(
                lambda r=one: (
                    not r.holds("user:x")
                    and not r.holds("user:z")
                    and r.holds("user:y")
                    and r.holds("user:w")
                ),
                "the lifts and the bans of the partition to hold on both replicas",
            )
        assert await pinned(redis_server.url, {"user:y", "user:w"})


async def test_after_redis_restarts_empty_the_bans_in_force_are_pinned_again(
    redis_server: RedisServer,
) -> None:
    async with replica(redis_server.url) as a, replica(redis_server.url) as b:
        a.start_ban("user:x")
        await until(lambda: b.holds("user:x"), "b to hold a's ban")
        redis_server.kill()  # it keeps nothing on disk: its pins are gone
        redis_server.start()
        redis_server.wait_up()
        await until(lambda: a.bulletin.restarted and b.bulletin.subscribed.is_set(), "resync")
        await until(lambda: pinned(redis_server.url, {"user:x"}), "the ban to be pinned again")
        async with replica(redis_server.url) as c:  # a replica started after the restart
            assert c.holds("user:x") and a.holds("user:x") and b.holds("user:x")
