"""Moderation of what goes into the model and what comes out, with a policy per plan.

Checkers say whether a text is flagged and under which categories: the embedded default matches
configured patterns (``[[moderation.rules]]``); a model-based checker plugs in through any
OpenAI-compatible ``/v1/moderations`` endpoint (``[moderation] upstream_url``). A plan's action
decides what a flag does:

- ``block``: a flagged question is refused (400 ``content_policy_violation``) before generation;
  a flagged answer is stopped where it is, with ``finish_reason: "content_filter"``;
- ``warn``: the exchange goes ahead and the response says what was flagged;
- ``tag``: nothing visible; the flags are stored with the message, for the flywheel;
- ``off``: no check.

Answers are checked while they stream by the pattern rules only (over a window of the latest
text, so the check stays cheap per token); the upstream checker sees questions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from lamplighter.exceptions import ConfigError, InvalidRequest
from lamplighter.settings import check_keys

ACTIONS = ("block", "warn", "tag", "off")


@dataclass(frozen=True)
class Verdict:
    categories: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        return bool(self.categories)

    def __or__(self, other: Verdict) -> Verdict:
        merged = dict.fromkeys((*self.categories, *other.categories))
        return Verdict(tuple(merged))


class Checker(Protocol):
    async def check(self, text: str) -> Verdict: ...


@dataclass(frozen=True)
class Rule:
    category: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class RuleChecker:
    rules: tuple[Rule, ...]

    def check_now(self, text: str) -> Verdict:
        return Verdict(
            tuple(dict.fromkeys(r.category for r in self.rules if r.pattern.search(text)))
        )

    async def check(self, text: str) -> Verdict:
        return self.check_now(text)


class UpstreamChecker:
    """An OpenAI-compatible ``POST /moderations``; ``fail_open`` decides what an unreachable
    or broken checker means. Its HTTP client is made at the first check, not here, so that the
    config file's ``[moderation]`` can be read and checked (at start, and on every reload) by
    building one that is then dropped, with nothing to close."""

    def __init__(self, url: str, model: str, api_key: str = "", fail_open: bool = True) -> None:
        self.url = url.rstrip("/")
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.fail_open = fail_open
        self._http: httpx.AsyncClient | None = None

    async def check(self, text: str) -> Verdict:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=10.0)
        try:
            response = await self._http.post(
                "/moderations",
                json={"input": text, **({"model": self.model} if self.model else {})},
            )
            response.raise_for_status()
            result = response.json()["results"][0]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            if self.fail_open:
                return Verdict()
            return Verdict(("moderation_unavailable",))
        if not result.get("flagged"):
            return Verdict()
        categories = [name for name, hit in result.get("categories", {}).items() if hit]
        return Verdict(tuple(categories) or ("flagged",))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


@dataclass
class Moderation:
    rules: RuleChecker = field(default_factory=lambda: RuleChecker(()))
    upstream: UpstreamChecker | None = None
    default_action: str = "tag"
    plan_actions: Mapping[str, str] = field(default_factory=dict)
    window: int = 400  # characters of an answer re-checked as it grows

    def action(self, plan: str) -> str:
        if not self.rules.rules and self.upstream is None:
            return "off"
        return self.plan_actions.get(plan, self.default_action)

    async def check_input(self, text: str) -> Verdict:
        verdict = self.rules.check_now(text)
        if self.upstream is not None:
            verdict = verdict | await self.upstream.check(text)
        return verdict

    def check_output(self, text: str) -> Verdict:
        return self.rules.check_now(text[-self.window :])

    async def close(self) -> None:
        if self.upstream is not None:
            await self.upstream.close()

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> Moderation:
        known = {"action", "plans", "rules", "upstream_url", "upstream_model", "api_key",
                 "fail_open"}  # fmt: skip
        check_keys("[moderation]", table, known)
        default = str(table.get("action", "tag"))
        plans = {str(k): str(v) for k, v in dict(table.get("plans", {})).items()}
        for action in (default, *plans.values()):
            if action not in ACTIONS:
                raise ConfigError(f"[moderation]: action {action!r}; use {', '.join(ACTIONS)}")
        rules = tuple(_rules(table.get("rules", [])))
        fail_open = table.get("fail_open", True)
        if not isinstance(fail_open, bool):  # bool("false") would let everything through
            raise ConfigError(f"[moderation]: 'fail_open' must be true or false, not {fail_open!r}")
        upstream = None
        if table.get("upstream_url"):
            upstream = UpstreamChecker(
                str(table["upstream_url"]),
                str(table.get("upstream_model", "")),
                str(table.get("api_key", "")),
                fail_open,
            )
        return cls(RuleChecker(rules), upstream, default, plans)


def _rules(tables: Sequence[Mapping[str, Any]]) -> list[Rule]:
    rules = []
    for table in tables:
        check_keys("[[moderation.rules]]", table, ("category", "patterns", "words"))
        if "category" not in table:
            raise ConfigError(
                f"[[moderation.rules]] {dict(table)!r}: needs category, patterns/words"
            )
        parts = [str(p) for p in table.get("patterns", [])]
        parts += [rf"\b{re.escape(str(w))}\b" for w in table.get("words", [])]
        if not parts:
            raise ConfigError(f"[[moderation.rules]] {table['category']!r}: no patterns or words")
        try:
            pattern = re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"[[moderation.rules]] {table['category']!r}: {exc}") from exc
        rules.append(Rule(str(table["category"]), pattern))
    return rules


class ContentBlocked(InvalidRequest):
    code = "content_policy_violation"
    violation = "moderation"

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(
            "Your message was flagged by this service's content policy "
            f"({', '.join(verdict.categories)}) and was not sent to the model.",
            param="messages",
        )
