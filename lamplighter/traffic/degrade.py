"""Degrading before refusing: what lower plans give up when a backend is under pressure.

Configured as ``[[traffic.degrade]]`` tables, checked in order; the first rule whose plans include
the caller's and whose pressure threshold is reached applies::

    [[traffic.degrade]]
    plans = ["free"]
    when_queued_at_least = 2      # requests waiting for the backend
    max_tokens = 256              # cap on the answer's length (optional)
    model = "small-model"         # serve from this model instead (optional)

Requests waiting are the measure of pressure because admission keeps the running count at the
backend's capacity: a queue is exactly the excess demand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lamplighter.exceptions import ConfigError
from lamplighter.settings import check_keys


@dataclass(frozen=True)
class DegradeRule:
    plans: frozenset[str]
    when_queued_at_least: int
    max_tokens: int | None = None
    model: str | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> DegradeRule:
        check_keys(
            "[[traffic.degrade]]", table, ("plans", "when_queued_at_least", "max_tokens", "model")
        )
        try:
            rule = cls(
                plans=frozenset(str(p) for p in table["plans"]),
                when_queued_at_least=int(table.get("when_queued_at_least", 1)),
                max_tokens=int(table["max_tokens"]) if "max_tokens" in table else None,
                model=str(table["model"]) if "model" in table else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"[[traffic.degrade]] {dict(table)!r}: {exc}") from exc
        if rule.max_tokens is None and rule.model is None:
            raise ConfigError("[[traffic.degrade]]: give max_tokens, model or both")
        if rule.when_queued_at_least < 0 or (rule.max_tokens is not None and rule.max_tokens < 1):
            raise ConfigError("[[traffic.degrade]]: thresholds and caps must be positive")
        return rule


@dataclass(frozen=True)
class Degradation:
    max_tokens: int | None
    model: str | None

    def describe(self) -> str:
        parts = [f"max_tokens={self.max_tokens}"] if self.max_tokens else []
        return ", ".join([*parts, *([f"model={self.model}"] if self.model else [])])


def rules_from_config(tables: Iterable[Mapping[str, Any]]) -> tuple[DegradeRule, ...]:
    return tuple(DegradeRule.from_table(table) for table in tables)


def degradation(rules: Iterable[DegradeRule], plan: str, queued: int) -> Degradation | None:
    """What the first matching rule takes away, or None when nothing applies."""
    for rule in rules:
        if plan in rule.plans and queued >= rule.when_queued_at_least:
            return Degradation(rule.max_tokens, rule.model)
    return None
