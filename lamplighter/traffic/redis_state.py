"""Limiter state in Redis, shared by every gateway replica, so that with N replicas each plan's
rate limits and concurrent-stream caps hold exactly as with one.

- **One script per decision.** ``reserve`` is one Lua script that takes a concurrent-stream
  slot and runs the GCRA arithmetic of ``limiters.check`` for every limit of a request, and
  spends them all or none; Redis runs a script alone, so two replicas racing for the last unit
  cannot both get it. It also returns what is left, so a request is admitted, or refused with
  its headers, in one round trip. ``settle`` (the unused tokens back in each bucket and the
  stream slot released, one call a request) and ``peek`` (any number of limits) are scripts too.
  Each limit is a hash of its TAT and the interval it was computed with, so a changed plan is
  rescaled exactly as ``MemoryState`` does, and it expires just after its TAT: an expired key is
  a full bucket, so idle users cost nothing.
- **Server time.** The scripts read ``TIME`` on the Redis server, one clock for every replica:
  replicas' clocks drift and would hand out extra units. The ``now`` the protocol passes is the
  caller's clock; it is used only by the local fallback (below), or, for tests, instead of the
  server's clock when built with ``use_server_time=False`` (so a property test can replay the
  same sequence on ``MemoryState`` and expect identical verdicts).
- **Leases.** A concurrent-stream slot is a member of a sorted set per key, scored by its expiry
  in server milliseconds; reserving drops expired members, counts and adds in the same script. A
  background task renews this replica's leases every ``lease_ttl / 3``, so a live stream keeps its
  slot however long it runs and a replica that dies loses its slots ``lease_ttl`` later.
- **Failure.** Calls time out after ``timeout`` seconds. While Redis does not answer (logged at
  ERROR once per outage, ``up`` is False, ``errors`` counts failed calls), ``failure="open"``
  keeps serving from a local ``MemoryState`` whose rates are the plan's divided by ``replicas``
  and whose stream caps are ``ceil(most / replicas)``, so the fleet still allows about the plan's
  limits; ``failure="closed"`` refuses with 503 ``overloaded``. Redis is tried again at most every
  ``retry_interval`` seconds (by requests and by the background task), and the first answer ends
  the outage. The local buckets start full, so an outage can let through up to one extra burst
  per replica, but never locks anyone out; what was spent locally is not carried into Redis.

Numbers cross between Python and Lua as ``%.17g`` strings, which round-trip a double exactly (a
Lua number returned to Redis would be truncated to an integer); Lua 5.1's numbers are doubles
like Python's floats, and the arithmetic is written operation for operation as in ``limiters``.
Not for Redis Cluster: a reservation's keys are not in one hash slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Literal, Self, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from lamplighter.exceptions import Overloaded
from lamplighter.traffic.limiters import Rate, Verdict
from lamplighter.traffic.state import Limit, MemoryState, Reserved

log = logging.getLogger(__name__)

T = TypeVar("T")
Failure = Literal["open", "closed"]
FAILURES: tuple[Failure, ...] = ("open", "closed")

_COMMON = """
local function clock(arg)  -- (now in seconds, whether it is the server's)
  if arg ~= '' then return tonumber(arg), false end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000, true
end
local function num(x) return string.format('%.17g', x) end
local function store(key, tat, interval, now, server)
  redis.call('HSET', key, 'tat', num(tat), 'interval', num(interval))
  -- Expire just after the TAT (a full bucket and a missing key are the same). A test's own
  -- clock has nothing to do with the server's, so its keys simply live an hour.
  local ttl = 3600000
  if server then ttl = math.ceil((tat - now) * 1000) + 1000 end
  redis.call('PEXPIRE', key, ttl)
end
-- The key's TAT at interval, or nil; a TAT kept at another interval (its limit changed) is
-- converted as limiters.convert does, and stored so.
local function load(key, now, interval, capacity, server)
  local stored = redis.call('HMGET', key, 'tat', 'interval')
  if not stored[1] then return nil end
  local tat, old = tonumber(stored[1]), tonumber(stored[2])
  if tat <= now or old == interval then return tat end
  tat = math.min(now + (tat - now) / old * interval, now + capacity * interval)
  store(key, tat, interval, now, server)
  return tat
end
local function begin(key, now, interval, capacity, server)  -- where its next units start
  local tat = load(key, now, interval, capacity, server)
  if tat and tat > now then return tat end
  return now
end
local function remaining(capacity, interval, tat, now)
  return math.max(0, math.floor(capacity - (tat - now) / interval + 1e-9))
end
local function give_back(key, now, interval, capacity, units, server)  -- unused units
  local tat = load(key, now, interval, capacity, server)
  if tat == nil or not (units > 0) then return end
  local new_tat = tat - units * interval
  if new_tat < now then new_tat = now end
  store(key, new_tat, interval, now, server)
end
"""

# KEYS: one hash per limit, then the stream's lease set when ARGV[2] names a lease to take.
# ARGV: now ('' for the server's clock), the lease ('' for none), the most slots, the lease's
# ttl (ms), then per limit interval, capacity, cost. Returns 'full', the ms until the soonest
# lease lapses, and per limit (remaining, reset_after) when every stream slot is taken (nothing
# else is checked); else 'ok' or
# 'refused' and per limit allowed, tat, remaining, reset_after, retry_after and the
# (remaining, reset_after) it had before, which still stand when the request is refused.
_RESERVE = (
    _COMMON
    + """
local now, server = clock(ARGV[1])
local lease, limits, set, ms = ARGV[2], #KEYS, nil, nil
if lease ~= '' then
  limits, set = limits - 1, KEYS[#KEYS]
  local t = redis.call('TIME')
  ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', ms)
  if redis.call('ZCARD', set) >= tonumber(ARGV[3]) then
    local soonest = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
    local out = {'full', num(tonumber(soonest[2]) - ms)}
    for i = 1, limits do
      local interval, capacity = tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 3])
      local start = begin(KEYS[i], now, interval, capacity, server)
      out[#out + 1] = num(remaining(capacity, interval, start, now))
      out[#out + 1] = num(start - now)
    end
    return out
  end
end
local out, tats, intervals, all = {''}, {}, {}, true
for i = 1, limits do
  local interval = tonumber(ARGV[3 * i + 2])
  local capacity = tonumber(ARGV[3 * i + 3])
  local cost = tonumber(ARGV[3 * i + 4])
  local start = begin(KEYS[i], now, interval, capacity, server)
  local new_tat = start + cost * interval
  local horizon = now + capacity * interval
  local before = remaining(capacity, interval, start, now)
  if new_tat <= horizon + 1e-9 then
    tats[i], intervals[i] = new_tat, interval
    out[#out + 1] = '1'
    out[#out + 1] = num(new_tat)
    out[#out + 1] = num(remaining(capacity, interval, new_tat, now))
    out[#out + 1] = num(new_tat - now)
    out[#out + 1] = '0'
  else
    all = false
    out[#out + 1] = '0'
    out[#out + 1] = num(start)
    out[#out + 1] = num(before)
    out[#out + 1] = num(start - now)
    if cost > capacity then out[#out + 1] = 'inf' else out[#out + 1] = num(new_tat - horizon) end
  end
  out[#out + 1] = num(before)
  out[#out + 1] = num(start - now)
end
if not all then
  out[1] = 'refused'
  return out
end
for i = 1, limits do store(KEYS[i], tats[i], intervals[i], now, server) end
if set then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', set, ms + ttl, lease)
  redis.call('PEXPIRE', set, ttl + 1000)
end
out[1] = 'ok'
return out
"""
)

# KEYS: the limits' hashes, then the stream's lease set when ARGV[2] names a lease to give back.
# ARGV: now, the lease ('' for none), then per limit interval, capacity and units given back.
# Settling a request is one call: its unused tokens back in every bucket, its slot released.
_SETTLE = (
    _COMMON
    + """
local now, server = clock(ARGV[1])
local lease, limits = ARGV[2], #KEYS
if lease ~= '' then limits = limits - 1 end
for i = 1, limits do
  local interval, capacity = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  give_back(KEYS[i], now, interval, capacity, tonumber(ARGV[3 * i + 2]), server)
end
if lease ~= '' then redis.call('ZREM', KEYS[#KEYS], lease) end
return 1
"""
)

# KEYS: the limits' hashes. ARGV: now, then per limit interval, capacity. Returns per limit
# remaining, reset_after.
_PEEK = (
    _COMMON
    + """
local now, server = clock(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local interval, capacity = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local start = begin(KEYS[i], now, interval, capacity, server)
  out[#out + 1] = num(remaining(capacity, interval, start, now))
  out[#out + 1] = num(start - now)
end
return out
"""
)

_MILLISECONDS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the lease sets of the leases held (repeats allowed). ARGV[1]: ttl (ms); then, per key,
# lease, most. A lease still there is extended; one that is gone (it lapsed while this replica
# could not reach Redis, or Redis restarted empty) is taken again if its set has room. Returns
# the positions of the leases that found no room.
_RENEW = (
    _MILLISECONDS
    + """
local ttl, lost = tonumber(ARGV[1]), {}
for i = 1, #KEYS do
  local lease, most = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZSCORE', KEYS[i], lease) or redis.call('ZCARD', KEYS[i]) < most then
    redis.call('ZADD', KEYS[i], now + ttl, lease)
    redis.call('PEXPIRE', KEYS[i], ttl + 1000)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""
)


class _Down(Exception):
    """Redis did not answer (or is not being tried again yet)."""


class RedisState:
    """Traffic state shared through Redis; see the module's docstring. Call :meth:`start` (or
    use ``async with``) to renew leases and watch for recovery, and :meth:`stop` at the end."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lamplighter:",
        failure: Failure = "open",
        replicas: int = 1,
        lease_ttl: float = 15.0,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        use_server_time: bool = True,
    ) -> None:
        if failure not in FAILURES:
            raise ValueError(f"failure must be 'open' or 'closed', not {failure!r}")
        if replicas < 1 or lease_ttl <= 0 or timeout <= 0 or retry_interval <= 0:
            raise ValueError("replicas, lease_ttl, timeout and retry_interval must be positive")
        self.prefix = prefix
        self.failure = failure
        self.replicas = replicas
        self.lease_ttl = lease_ttl
        self.retry_interval = retry_interval
        self.use_server_time = use_server_time
        self.errors = 0  # Redis calls that failed or timed out
        self._where = _redact(url)
        # A failed call falls back at once, and the outage logic below decides when to try
        # again; the one retry inside the client is for a connection error only, on a fresh
        # connection: after a Redis restart, each connection the pool kept from before fails
        # once, which must not start a new outage (a server that is really down refuses the
        # retry at once too). A timeout is not retried.
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=True,
        )
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._peek = self._redis.register_script(_PEEK)
        self._renew = self._redis.register_script(_RENEW)
        self._held: dict[str, tuple[str, int]] = {}  # lease -> (key, most): renewed in Redis
        self._lost: set[str] = set()  # held leases that found no room on renewal (logged once)
        self._local = MemoryState()  # the fallback while Redis is down (failure="open")
        self._local_leases: set[str] = set()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def client(self) -> Redis:
        """The connection pool, for other shared state (the response cache) to use too."""
        return self._redis

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once (so an outage at start is logged at once) and start renewing."""
        with contextlib.suppress(_Down):
            await self._call(self._redis.ping)
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name="redis-state-leases")

    async def stop(self) -> None:
        """Stop renewing and close the connections. Leases still held lapse after their TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def up(self) -> bool:
        """False from a failed call until Redis answers again."""
        return self._down_since is None

    async def check(self) -> bool:
        """Does Redis answer now? One ping (none while an outage is not due a retry), which
        starts or ends an outage as any call does: an idle replica notices too."""
        with contextlib.suppress(_Down):
            await self._call(self._redis.ping)
        return self.up

    # -- TrafficState -----------------------------------------------------------------------

    async def reserve(
        self, limits: Sequence[Limit], now: float, stream: tuple[str, int] | None = None
    ) -> Reserved:
        keys = [self._key(limit) for limit in limits]
        lease = uuid.uuid4().hex if stream is not None else ""
        args: list[str] = [self._now(now), lease, "0", str(math.ceil(self.lease_ttl * 1000))]
        if stream is not None:
            keys.append(self._lease_key(stream[0]))
            args[2] = str(stream[1])
        for limit in limits:
            args += [repr(limit.rate.interval), repr(limit.rate.capacity), repr(float(limit.cost))]
        try:
            out: list[str] = await self._call(lambda: self._reserve(keys=keys, args=args))
        except _Down:
            self._refuse_if_closed()
            return await self._reserve_locally(limits, now, stream)
        if out[0] == "full":
            lapses = float(out[1]) / 1000
            return Reserved([], _pairs(out[2:]), no_stream_slot=True, slot_lapses_in=lapses)
        verdicts = [
            Verdict(
                allowed=out[i] == "1",
                tat=float(out[i + 1]),
                remaining=int(float(out[i + 2])),
                reset_after=float(out[i + 3]),
                retry_after=float(out[i + 4]),
            )
            for i in range(1, len(out), 7)
        ]
        if out[0] != "ok":
            before = [value for i in range(1, len(out), 7) for value in out[i + 5 : i + 7]]
            return Reserved(verdicts, _pairs(before))
        if stream is not None:
            self._held[lease] = stream
        standing = [(v.remaining, v.reset_after) for v in verdicts]
        return Reserved(verdicts, standing, lease or None)

    async def _reserve_locally(
        self, limits: Sequence[Limit], now: float, stream: tuple[str, int] | None
    ) -> Reserved:
        """This replica's share of every limit and stream cap, while Redis is down."""
        if stream is not None:
            stream = (stream[0], math.ceil(stream[1] / self.replicas))
        reserved = await self._local.reserve([self._share(limit) for limit in limits], now, stream)
        if reserved.lease is not None:
            self._local_leases.add(reserved.lease)
        return reserved

    async def settle(
        self,
        refunds: Sequence[tuple[Limit, float]],
        now: float,
        stream: tuple[str, str] | None = None,
    ) -> None:
        keys = [self._key(limit) for limit, _ in refunds]
        args = [self._now(now), ""]
        for limit, units in refunds:
            args += [repr(limit.rate.interval), repr(limit.rate.capacity), repr(float(units))]
        local_lease = None
        if stream is not None:
            key, lease = stream
            if lease in self._local_leases:
                local_lease = stream
            elif self._held.pop(lease, None) is not None:
                self._lost.discard(lease)
                keys.append(self._lease_key(key))
                args[1] = lease
        if keys:
            try:
                await self._call(lambda: self._settle(keys=keys, args=args))
            except _Down:
                # Giving back can only make limits looser: when failing closed it is dropped,
                # not refused (the request it settles has already been answered). A lease not
                # given back is no longer renewed: it lapses within lease_ttl.
                if self.failure == "open":
                    shares = [(self._share(limit), units) for limit, units in refunds]
                    await self._local.settle(shares, now)
        if local_lease is not None:
            self._local_leases.discard(local_lease[1])
            await self._local.settle([], now, local_lease)

    async def peek(self, limits: Sequence[Limit], now: float) -> list[tuple[int, float]]:
        args = [self._now(now)]
        for limit in limits:
            args += [repr(limit.rate.interval), repr(limit.rate.capacity)]
        keys = [self._key(limit) for limit in limits]
        try:
            out: list[str] = await self._call(lambda: self._peek(keys=keys, args=args))
        except _Down:
            # Peeking spends nothing, so it is never refused (every /v1 call shows the headers);
            # failing closed, nothing can be spent until Redis answers, and that is what it says.
            if self.failure == "closed":
                return [(0, self.retry_interval) for _ in limits]
            return await self._local.peek([self._share(limit) for limit in limits], now)
        return _pairs(out)

    def in_force(self, limits: Sequence[Limit], most: int) -> tuple[list[Limit], int]:
        if self.up or self.failure == "closed":
            return list(limits), most
        return [self._share(limit) for limit in limits], math.ceil(most / self.replicas)

    # -- internals --------------------------------------------------------------------------

    def _key(self, limit: Limit) -> str:
        return f"{self.prefix}limit:{limit.key}"

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}streams:{key}"

    def _now(self, now: float) -> str:
        return "" if self.use_server_time else repr(float(now))

    def _share(self, limit: Limit) -> Limit:
        """This replica's share of a limit while Redis is down: 1/replicas of its rate. The
        burst is never below the request's own cost (up to the plan's burst), so a request the
        plan allows is never refused as too large for it."""
        if self.replicas == 1:
            return limit
        rate, capacity = limit.rate, limit.rate.capacity
        burst = max(1.0, capacity / self.replicas, min(float(limit.cost), capacity))
        share = Rate(rate.rate / self.replicas, rate.period, burst)
        return Limit(limit.key, limit.name, share, limit.cost)

    def _refuse_if_closed(self) -> None:
        if self.failure == "closed":
            raise Overloaded(
                "Rate limits cannot be checked right now: the shared traffic state (Redis) is "
                "unreachable, and this service refuses requests rather than serve them "
                "unchecked. Please try again in a few seconds.",
                retry_after=1.0,
            )

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call, or :class:`_Down` when it fails or an outage is not due a retry."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            raise _Down
        try:
            result = await call()
        except (RedisError, OSError) as error:  # OSError covers timeouts and refused sockets
            self._failed(error)
            raise _Down from error
        if self._down_since is not None:
            log.warning(
                "Redis at %s answers again after %.1f s: rate limits and stream slots are "
                "shared across replicas again",
                self._where,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return result

    def _failed(self, error: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        self._retry_at = now + self.retry_interval
        if self._down_since is not None:
            return
        self._down_since = now
        share = f"1/{self.replicas} of every limit" if self.replicas > 1 else "every limit"
        policy = (
            f"failing open: this replica enforces {share} on its own"
            if self.failure == "open"
            else "failing closed: requests are refused with 503 until it answers"
        )
        log.error(
            "Redis at %s is unreachable (%s: %s); %s. Retrying every %g s.",
            self._where,
            type(error).__name__,
            error,
            policy,
            self.retry_interval,
        )

    async def _keep(self) -> None:
        """Renew held leases every lease_ttl / 3; while Redis is down, probe it for recovery."""
        tick = min(self.lease_ttl / 3, self.retry_interval)
        renew_at = 0.0
        while True:
            await asyncio.sleep(tick)
            try:
                if self._down_since is not None:
                    await self._call(self._redis.ping)
                if self._held and time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + self.lease_ttl / 3
                    await self._renew_held()
            except _Down:
                continue
            except Exception:  # a bug here must not stop renewal for good
                log.exception("renewing stream leases in Redis failed")

    async def _renew_held(self) -> None:
        leases = list(self._held.items())
        keys = [self._lease_key(key) for _, (key, _) in leases]
        args: list[str | int] = [str(math.ceil(self.lease_ttl * 1000))]
        for lease, (_, most) in leases:
            args += [lease, most]
        lost: list[int] = await self._call(lambda: self._renew(keys=keys, args=args))
        # A lease given back while the renewal was on its way may have reached Redis first, and
        # then been taken again by it (its set had room): the slot would look taken for a whole
        # TTL. Give those back once more.
        gone = [
            (self._lease_key(key), lease) for lease, (key, _) in leases if lease not in self._held
        ]
        for lease_key, lease in gone:
            await self._call(partial(self._redis.zrem, lease_key, lease))
        for position in lost:
            lease = leases[position - 1][0]
            if lease in self._held and lease not in self._lost:
                self._lost.add(lease)
                log.warning(
                    "a stream of %s lost its slot (its lease lapsed while Redis was out of "
                    "reach and the slot was taken); it runs on uncounted until it ends",
                    self._held[lease][0],
                )
        # Leases renewed again are no longer lost.
        self._lost &= {leases[position - 1][0] for position in lost}


def _pairs(flat: Sequence[str]) -> list[tuple[int, float]]:
    """(remaining, reset_after) pairs from a script's flat list of them."""
    return [(int(float(flat[i])), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
