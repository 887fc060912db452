"""Backend slots shared by every replica, in Redis: with N gateway replicas, a backend still runs
at most its ``capacity`` requests, and a better plan's request waiting on any replica starts
before a worse plan's request waiting on another.

Each replica keeps its own queue (``Scheduler``: strict priority, then fair share inside a plan
class, patience) and puts only its **head**, the request it would start next, forward in Redis.
A slot goes to the best head of all replicas (priority, then the time that head first came
forward, by the Redis server's clock), so priority holds across replicas and fairness holds
inside each. Everything is decided by one Lua script per attempt, so two replicas racing for
the last slot cannot both get it.

- ``running``: sorted set of tickets holding a slot, scored by their lease's expiry. A replica
  renews its tickets' leases every few seconds (adding back any a restarted Redis lost); a
  replica that dies loses its slots when they lapse.
- ``heads``: sorted set of replicas with a request waiting, scored ``priority * 1e13 + since``;
  ``alive`` expires a head whose replica stopped asking (it died).
- When a slot frees while a head waits on some replica, the releasing replica announces it
  (on the ``bulletin`` channel, from the same script, so releasing costs one round trip) and the
  others ask again at once; they also ask every ``POLL_S`` in case an announcement was lost.
  With nobody waiting nothing is announced: a fleet's announcements grow with its queueing, not
  with its traffic times its replicas.

Every write sets a key's expiry to at least the lease it writes (never shortening it), so a key
outlives its every entry and a backend taken out of the configuration leaves nothing in Redis
once its last lease has lapsed.

If Redis does not answer, ``admit`` returns None and the pool falls back to a share of the
backend of its own (``ceil(capacity / replicas)`` slots), as the rate limits do.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

# For annotations only: redis is imported where a call to it is made, so that a replica
# without Redis never loads it.
if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

# How often a replica asks again for a slot when nobody said one freed up.
POLL_S = 0.25
# A timed-out call is a failed call: slots are the fallback's business then.
TIMEOUT_S = 0.25

# A key lives at least ``ms`` more milliseconds: as long as the entry just written to it.
_OUTLIVE = """
local function outlive(key, ms)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ms) then
    redis.call('PEXPIRE', key, ms)
  end
end
"""

# Both scripts start here: the server's clock, lapsed slots dropped, dead replicas' heads too.
_SWEEP = (
    _OUTLIVE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, gone in ipairs(dead) do
  redis.call('ZREM', KEYS[2], gone)
  redis.call('ZREM', KEYS[3], gone)
  redis.call('HDEL', KEYS[4], gone .. ':ticket', gone .. ':since')
end
"""
)

_ADMIT = (
    _SWEEP
    + """
local replica, ticket = ARGV[1], ARGV[2]
local priority, capacity = tonumber(ARGV[3]), tonumber(ARGV[4])
local reserved, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HGET', KEYS[4], replica .. ':ticket') ~= ticket then
  redis.call('HSET', KEYS[4], replica .. ':ticket', ticket, replica .. ':since', now)
end
local since = tonumber(redis.call('HGET', KEYS[4], replica .. ':since'))
redis.call('ZADD', KEYS[2], priority * 1e13 + since, replica)
redis.call('ZADD', KEYS[3], now + ttl, replica)
for i = 2, 4 do
  outlive(KEYS[i], ttl)
end
local free = capacity - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], replica)
if free - rank > reserved then
  redis.call('ZADD', KEYS[1], now + ttl, ticket)
  outlive(KEYS[1], ttl)
  redis.call('ZREM', KEYS[2], replica)
  redis.call('ZREM', KEYS[3], replica)
  redis.call('HDEL', KEYS[4], replica .. ':ticket', replica .. ':since')
  return 1
end
return 0
"""
)

# A slot only if one is free beyond the reservation after every head of the same or a better
# priority has had one: nobody waiting for this backend is overtaken.
_TAKE = (
    _SWEEP
    + """
local ticket, priority = ARGV[1], tonumber(ARGV[2])
local capacity, reserved, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ahead = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. tostring((priority + 1) * 1e13))
if capacity - redis.call('ZCARD', KEYS[1]) - ahead > reserved then
  redis.call('ZADD', KEYS[1], now + ttl, ticket)
  outlive(KEYS[1], ttl)
  return 1
end
return 0
"""
)

_WITHDRAW = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1] .. ':ticket', ARGV[1] .. ':since')
return 1
"""

# KEYS: running, heads. ARGV: the ticket, then the channel and message announcing the freed
# slot ('' for none), published only if a head is waiting for one.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"""

_RENEW = (
    _OUTLIVE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
outlive(KEYS[1], ttl)
return 1
"""
)


class SlotGate:
    """The Redis side of shared backend slots (see the module's docstring)."""

    def __init__(
        self,
        client: Redis,
        *,
        lease_ttl: float = 15.0,
        timeout_s: float = TIMEOUT_S,
        announce: Callable[[str], tuple[str, str]] | None = None,
    ) -> None:
        """``announce`` gives the (channel, message) telling the other replicas that a slot of
        a pool freed up (see ``Bulletin.envelope``); without it, they find out by polling."""
        self.client = client
        self.lease_ttl = lease_ttl
        self.timeout_s = timeout_s
        self.announce = announce
        self.replica = uuid.uuid4().hex[:12]
        # Whether Redis answered the last admission: while it does not, nobody asks it for a
        # slot elsewhere before queuing (each try could wait ``timeout_s``).
        self.answering = True
        self._admit = client.register_script(_ADMIT)
        self._take = client.register_script(_TAKE)
        self._withdraw = client.register_script(_WITHDRAW)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @staticmethod
    def _keys(pool: str) -> list[str]:
        base = f"lamplighter:pool:{pool}:"
        return [base + "running", base + "heads", base + "alive", base + "meta"]

    def ticket(self, local_id: int) -> str:
        return f"{self.replica}:{local_id}"

    async def admit(
        self, pool: str, ticket: str, priority: int, capacity: int, reserved: int
    ) -> bool | None:
        """Put ``ticket`` forward as this replica's head and take a slot if it is its turn:
        True (it holds a slot now), False (not yet), None (Redis did not answer)."""
        args: list[str | int] = [
            self.replica, ticket, priority, capacity, reserved, int(self.lease_ttl * 1000)
        ]  # fmt: skip
        return await self._decide(self._admit, pool, args)

    async def take(
        self, pool: str, ticket: str, priority: int, capacity: int, reserved: int
    ) -> bool | None:
        """Take a slot for ``ticket`` now if that overtakes nobody waiting on any replica, without
        queuing for one: True (it holds a slot), False (no slot for it now), None (Redis did not
        answer)."""
        args: list[str | int] = [ticket, priority, capacity, reserved, int(self.lease_ttl * 1000)]
        return await self._decide(self._take, pool, args)

    async def _decide(self, script: AsyncScript, pool: str, args: list[str | int]) -> bool | None:
        """Run an admission script on ``pool``'s keys: its yes or no, or None (and
        ``answering`` false) when Redis does not answer in time."""
        from redis.exceptions import RedisError

        try:
            got = await asyncio.wait_for(script(keys=self._keys(pool), args=args), self.timeout_s)
        except (RedisError, OSError, TimeoutError):
            self.answering = False
            return None
        self.answering = True
        return bool(int(got))

    async def withdraw(self, pool: str) -> None:
        """This replica has nothing waiting any more."""
        _, heads, alive, meta = self._keys(pool)
        await self._quietly(self._withdraw(keys=[heads, alive, meta], args=[self.replica]))

    async def release(self, pool: str, ticket: str) -> None:
        """Give ``ticket``'s slot back, and announce it if anyone is waiting for one."""
        running, heads = self._keys(pool)[:2]
        channel, message = self.announce(pool) if self.announce is not None else ("", "")
        args = [ticket, channel, message]
        await self._quietly(self._release(keys=[running, heads], args=args))

    async def renew(self, pool: str, tickets: Sequence[str]) -> None:
        """Extend the leases of ``tickets`` (running here), adding back any Redis lost: after a
        Redis restart, or admitted on this replica's own share during an outage, they still
        hold a slot of the backend. The caller releases again whatever finished meanwhile."""
        if tickets:
            args: list[str | int] = [int(self.lease_ttl * 1000), *tickets]
            await self._quietly(self._renew(keys=self._keys(pool)[:1], args=args))

    async def running(self, pool: str) -> int:
        """Slots held on this backend by every replica together."""
        return int(await self.client.zcard(self._keys(pool)[0]))

    async def _quietly(self, call: object) -> None:
        """A release or renewal Redis missed is repaired by the lease's expiry."""
        from redis.exceptions import RedisError

        try:
            await asyncio.wait_for(call, self.timeout_s)  # type: ignore[arg-type]
        except (RedisError, OSError, TimeoutError) as error:
            log.debug("shared slot bookkeeping failed: %s", error)
