"""An exact-match response cache for deterministic requests.

A request is deterministic when it samples greedily (temperature 0) or fixes a seed; the same
model, messages and sampling settings then give the same answer, so a repeat can be served
without touching a GPU. Entries live for the plan's ``cache_ttl_s`` (0 turns caching off for the
plan) and are kept per plan, so a plan's answers are never served to another. Memory is bounded:
the least recently used entry goes first.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest


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


class ResponseCache:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self.hits = 0
        self.misses = 0

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
