"""What one replica changes, every replica hears: a Redis pub/sub channel for "reload this".

An admin edits a plan on replica A; A writes it to the database and publishes ``plans`` here;
every other replica's listener reloads that plan from the database, so the change binds the next
request wherever it lands. Messages carry no state, only what to reread, so a lost message costs
nothing but time: each replica also rereads on a slow timer (``PlanBook.refresh`` every
``RESYNC_S``), and after its subscription comes back from a Redis outage.

The same channel carries requests about an answer that runs on whichever replica holds it:
``response.cancel`` (a background response's cancel, a web chat's Stop) and ``answer.watch``
(a page reads an answer whose own page went away: keep it going; see ``chat.Detached``). A lost
one of those runs an answer to its end, or cuts it sooner; a watching page asks again at its
next poll.

A topic may say how to catch up after its messages could not be heard (``on``'s ``resync``,
run after the subscription comes back): plans are reread from the database, and bans, which
live in no database, are also *pinned* here (``pin``: a Redis hash per topic, each entry kept
until it lapses) for replicas that start later or were away from Redis when one began. A pin or
unpin that could not reach Redis is owed, and written (and published) when the subscription
comes back, before any topic catches up: a replica subscribes before it reads the pins, so
whatever another replica posts after that read, it hears. Other topics' messages missed
meanwhile are lost.

Without Redis (one replica) publishing does nothing: the replica that made the change has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

# For annotations only: redis is imported where a call to it is made, so that a replica
# without Redis never loads it.
if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

CHANNEL = "lamplighter:bulletin"
PINNED = "lamplighter:pinned:"  # + topic: a hash of a key to its notice, as JSON
# How long to wait before subscribing again after Redis went away.
RECONNECT_S = 1.0

Handler = Callable[[dict[str, Any]], Awaitable[None]]
Resync = Callable[[], Awaitable[None]]


class Bulletin:
    def __init__(self, url: str = "", channel: str = CHANNEL) -> None:
        self.channel = channel
        self.me = uuid.uuid4().hex  # our own messages are not for us
        self._redis: Redis | None = None
        if url:
            from redis.asyncio import Redis

            # Named, so that an operator's CLIENT LIST tells the bulletin's connections apart.
            self._redis = Redis.from_url(
                url,
                socket_timeout=None,
                socket_connect_timeout=1.0,
                client_name=f"lamplighter-bulletin-{self.me}",
            )
        self._handlers: dict[str, Handler] = {}
        self._resyncs: dict[str, Resync] = {}
        # Pins and unpins not yet written to Redis: (topic, key) -> ("pin", notice) | ("unpin", {}).
        self._owed: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        # Whether the Redis server restarted (its run id changed) while this replica was away:
        # then its pins may be gone with it (a Redis that keeps nothing on disk).
        self.restarted = False
        self._run: str | None = None
        self.heard = 0

    def on(self, topic: str, handler: Handler, resync: Resync | None = None) -> None:
        """Hear ``topic``'s messages; ``resync`` catches up on what they said while this
        replica could not hear them (none: it is lost)."""
        self._handlers[topic] = handler
        if resync is not None:
            self._resyncs[topic] = resync

    def envelope(self, topic: str, **payload: Any) -> tuple[str, str]:
        """(channel, message) of an announcement, for a caller that publishes it itself (from
        a Lua script, say: ``SlotGate.release``)."""
        return self.channel, json.dumps({"topic": topic, "from": self.me, **payload})

    async def publish(self, topic: str, **payload: Any) -> None:
        """Tell the other replicas; an unreachable Redis is logged, not raised: the change is
        already stored, and the others' timers will find it."""
        if self._redis is None:
            return
        from redis.exceptions import RedisError

        channel, message = self.envelope(topic, **payload)
        try:
            await asyncio.wait_for(self._redis.publish(channel, message), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("could not announce a change to other replicas: %s", error)

    async def pin(self, topic: str, key: str, *, until: float, **notice: Any) -> bool:
        """Post a notice of ``topic``: kept under ``key`` until ``until`` (wall-clock seconds)
        for the replicas that start later or were away (``pinned``), and published as a message
        of ``topic`` to those listening now. When Redis cannot be reached (logged), this replica
        owes it, and posts it when its subscription comes back; whether it was posted now."""
        return await self._pay({(topic, key): ("pin", {"until": until, **notice})})

    async def unpin(self, topic: str, *keys: str) -> bool:
        """Take back the notices of ``topic`` under ``keys``, and publish ``<topic>.lift``
        with the keys to the replicas listening now; owed like ``pin`` when Redis cannot be
        reached. Whether it was done now."""
        return await self._pay({(topic, key): ("unpin", {}) for key in keys})

    def owed(self, topic: str) -> set[str]:
        """The keys of ``topic`` this replica pinned but could not post yet."""
        return {key for (of, key), (act, _) in self._owed.items() if of == topic and act == "pin"}

    async def _pay(self, intents: dict[tuple[str, str], tuple[str, dict[str, Any]]]) -> bool:
        """Write pins and unpins, then their messages; each stays owed until written (unless a
        later one for the same key replaced it meanwhile)."""
        if self._redis is None or not intents:
            return True
        from redis.exceptions import RedisError

        self._owed.update(intents)
        lifted: dict[str, list[str]] = {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (topic, key), (act, notice) in intents.items():
                    if act == "pin":
                        pipe.hset(PINNED + topic, key, json.dumps(notice))
                        pipe.publish(*self.envelope(topic, **notice))
                    else:
                        pipe.hdel(PINNED + topic, key)
                        lifted.setdefault(topic, []).append(key)
                for topic, keys in lifted.items():
                    pipe.publish(*self.envelope(topic + ".lift", keys=keys))
                await asyncio.wait_for(pipe.execute(), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("could not post %d notices to other replicas: %s", len(intents), error)
            return False
        for which, intent in intents.items():
            if self._owed.get(which) is intent:
                del self._owed[which]
        return True

    async def pinned(self, topic: str) -> list[dict[str, Any]] | None:
        """The notices of ``topic`` still in force (lapsed ones are dropped); None when Redis
        cannot be reached, which is logged."""
        if self._redis is None:
            return []
        from redis.exceptions import RedisError

        try:
            kept = await asyncio.wait_for(self._redis.hgetall(PINNED + topic), timeout=1.0)
            now = time.time()
            notices, lapsed = [], []
            for key, text in kept.items():
                with contextlib.suppress(ValueError, TypeError):
                    notice = json.loads(text)
                    if isinstance(notice, dict) and float(notice.get("until", 0)) > now:
                        notices.append(notice)
                        continue
                lapsed.append(key)
            if lapsed:
                await asyncio.wait_for(self._redis.hdel(PINNED + topic, *lapsed), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("could not read the %s notices other replicas keep: %s", topic, error)
            return None
        return notices

    async def start(self) -> None:
        if self._redis is not None and self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._redis is not None:
            await self._redis.aclose()

    async def _listen(self) -> None:
        assert self._redis is not None
        from redis.exceptions import RedisError, ResponseError

        missed = False
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    try:
                        run: str | None = (await self._redis.info("server")).get("run_id")
                    except ResponseError:  # INFO refused by an ACL: assume the worst
                        run = None
                    self.restarted = run is None or (self._run is not None and run != self._run)
                    self._run = run
                    self.subscribed.set()
                    if missed:  # anything may have changed while we were not listening
                        await self._everything()
                        missed = False
                    async for message in pubsub.listen():
                        await self._deliver(message.get("data"))
            except (RedisError, OSError) as error:
                if self.subscribed.is_set():
                    log.warning("lost the bulletin subscription, retrying: %s", error)
                self.subscribed.clear()
                missed = True
                await asyncio.sleep(RECONNECT_S)

    async def _deliver(self, data: object) -> None:
        try:
            message = json.loads(data) if isinstance(data, str | bytes) else None
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("from") == self.me:
            return
        handler = self._handlers.get(str(message.get("topic")))
        if handler is None:
            return
        self.heard += 1
        try:
            await handler(message)
        except Exception:
            log.exception("handling a bulletin about %s failed", message.get("topic"))

    async def _everything(self) -> None:
        await self._pay(dict(self._owed))
        for topic, resync in self._resyncs.items():
            try:
                await resync()
            except Exception:
                log.exception("resynchronising %s failed", topic)
