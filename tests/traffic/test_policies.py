"""The cache key and degrade rules: pure policy, checked without a server."""

from __future__ import annotations

import pytest

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import GenerationRequest
from lamplighter.exceptions import ConfigError
from lamplighter.traffic.cache import CachedAnswer, ResponseCache, cache_key
from lamplighter.traffic.degrade import degradation, rules_from_config

REQUEST = GenerationRequest(model="m", turns=(Turn("user", "hi"),), temperature=0.0)


def test_only_deterministic_requests_have_a_cache_key() -> None:
    assert cache_key("free", REQUEST, 10) is not None
    seeded = GenerationRequest(model="m", turns=REQUEST.turns, temperature=0.9, seed=3)
    assert cache_key("free", seeded, 10) is not None
    sampled = GenerationRequest(model="m", turns=REQUEST.turns, temperature=0.9)
    assert cache_key("free", sampled, 10) is None


def test_keys_differ_by_plan_messages_and_length() -> None:
    other = GenerationRequest(model="m", turns=(Turn("user", "ho"),), temperature=0.0)
    keys = {
        cache_key("free", REQUEST, 10),
        cache_key("plus", REQUEST, 10),
        cache_key("free", other, 10),
        cache_key("free", REQUEST, 11),
    }
    assert len(keys) == 4


def test_entries_expire_and_the_oldest_is_evicted_first() -> None:
    cache = ResponseCache(max_entries=2)
    answer = CachedAnswer("x", 1, 1, "stop")
    cache.put("a", answer, ttl=10, now=0)
    cache.put("b", answer, ttl=10, now=0)
    assert cache.get("a", now=5) == answer  # a is now the most recently used
    cache.put("c", answer, ttl=10, now=5)
    assert cache.get("b", now=5) is None
    assert cache.get("a", now=11) is None  # expired
    cache.put("z", answer, ttl=0, now=0)
    assert cache.get("z", now=0) is None  # a zero TTL caches nothing


def test_the_first_matching_rule_applies_at_its_threshold() -> None:
    rules = rules_from_config(
        [
            {"plans": ["free"], "when_queued_at_least": 10, "model": "tiny"},
            {"plans": ["free", "plus"], "when_queued_at_least": 2, "max_tokens": 128},
        ]
    )
    assert degradation(rules, "free", 1) is None
    assert degradation(rules, "free", 2).max_tokens == 128  # type: ignore[union-attr]
    assert degradation(rules, "free", 10).model == "tiny"  # type: ignore[union-attr]
    assert degradation(rules, "team", 50) is None


@pytest.mark.parametrize(
    "table",
    [
        {"plans": ["free"]},
        {"plans": ["free"], "max_tokens": 0},
        {"plans": ["free"], "max_tokens": 5, "colour": "red"},
        {"max_tokens": 5},
    ],
)
def test_bad_rules_are_refused(table: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        rules_from_config([table])
