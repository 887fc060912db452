"""An exact-match response cache for deterministic requests.

A request is deterministic when it samples greedily (temperature 0) or fixes a seed; the same
model, messages and sampling settings then give the same answer, so a repeat can be served
without touching a GPU. Entries live for the plan's ``cache_ttl_s`` (0 turns caching off for the
plan) and are kept per plan, so a plan's answers are never served to another. Memory is bounded:
the least recently used entry goes first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest

# For annotations only: redis is imported where a call to it is made, so that a replica
# without Redis never loads it.
if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    async def replay(self, _: PreparedRequest) -> AsyncIterator[Chunk]:
        yield Chunk(
            self.text,
            tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
        )


def cache_key(plan: str, request: GenerationRequest, max_tokens: int) -> str | None:
    """The key of a deterministic request, None for one that samples freely."""
    if request.temperature != 0 and request.seed is None:
        return None
    fields = asdict(request)
    fields.update(plan=plan, max_tokens=max_tokens, max_tokens_cap=None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


log = logging.getLogger(__name__)

SHARED_PREFIX = "lamplighter:cache:"
# A shared lookup slower than this counts as a miss: generating is the fallback, not waiting.
SHARED_TIMEOUT_S = 0.25


class ResponseCache:
    def __init__(self, max_entries: int = 10_000, shared: Redis | None = None) -> None:
        self.max_entries = max_entries
        self.shared = shared
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0

    async def lookup(self, key: str, now: float) -> CachedAnswer | None:
        """This replica's entry, else the shared one (kept here for the rest of its TTL)."""
        found = self.get(key, now)
        if found is not None or self.shared is None:
            return found
        from redis.exceptions import RedisError

        try:
            async with self.shared.pipeline(transaction=False) as pipe:
                pipe.get(SHARED_PREFIX + key)
                pipe.pttl(SHARED_PREFIX + key)
                raw, ttl_ms = await asyncio.wait_for(pipe.execute(), SHARED_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError):
            return None
        if raw is None or ttl_ms is None or ttl_ms <= 0:
            return None
        try:
            answer = CachedAnswer(**json.loads(raw))
        except (TypeError, ValueError):
            return None
        self.misses -= 1  # the local miss above was answered after all
        self.hits += 1
        self.put(key, answer, ttl_ms / 1000, now)
        return answer

    def keep(self, key: str, answer: CachedAnswer, ttl: float, now: float) -> None:
        """Keep an answer here and, in the background, for every replica."""
        self.put(key, answer, ttl, now)
        if self.shared is None or ttl <= 0:
            return
        task = asyncio.create_task(self._share(key, answer, ttl))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _share(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        assert self.shared is not None
        from redis.exceptions import RedisError

        value = json.dumps(asdict(answer))
        try:
            await asyncio.wait_for(
                self.shared.set(SHARED_PREFIX + key, value, px=max(1, int(ttl * 1000))), 1.0
            )
        except (RedisError, OSError, TimeoutError) as error:
            log.debug("could not share a cached answer: %s", error)

    def get(self, key: str, now: float) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: str, answer: CachedAnswer, ttl: float, now: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (now + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
