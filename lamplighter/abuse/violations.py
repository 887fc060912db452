"""Violation scores per user and per address, and temporary bans that grow with repetition.

Each violation (a rate-limit hit, a concurrent-stream breach, a failed login, a model the plan
does not allow, ...) adds its weight to the score of every subject it concerns (``user:<id>``,
``ip:<address>``). Scores decay exponentially with ``half_life_s``, so an honest user who trips
a limit now and then never gets near the threshold, while a script hammering the service
climbs fast. At ``threshold`` the subject is banned for ``ban_s``, doubling with each repeat up to
``max_ban_s``, and its score starts again from zero. Weights and thresholds come from the
``[abuse]`` table of the config file. State is per process (shared state comes with Redis).

A refusal that tells the caller when to come back (a 429 with ``retry-after``) counts only if the
caller came back sooner than a refusal of the same kind told it to. Clients that honour
``retry-after``, as the OpenAI SDKs do with their automatic retries, are never scored for being
refused: five calls of the SDK over a plan's concurrent-stream cap (three attempts each, a
second apart) once got a person banned. A script that ignores it climbs as fast as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

from lamplighter.exceptions import ConfigError
from lamplighter.settings import check_keys

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS: Mapping[str, float] = {
    "rate_limited": 1.0,  # a 429 from a plan's rate limits or quota
    "concurrency": 2.0,  # more streams at once than the plan allows
    "model_not_allowed": 2.0,  # asking for a model the plan does not include
    "login_failed": 1.0,
    "moderation": 5.0,  # a question blocked by the content policy
    "flood": 5.0,  # taking part in a prompt flood across accounts
    "non_browser": 3.0,  # a script on a plan that is for the web chat only
    "key_leaked": 0.0,  # a live key pasted into a prompt: a warning, not abuse
}


@dataclass(frozen=True)
class ViolationPolicy:
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    threshold: float = 30.0
    half_life_s: float = 600.0
    ban_s: float = 300.0
    max_ban_s: float = 7 * 86400.0
    # Addresses never scored or banned: loopback is the operator, or a reverse proxy that did not
    # pass the client's address on (banning it would ban everyone).
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> ViolationPolicy:
        """The policy from the ``[abuse]`` table: threshold, half_life_s, ban_s, max_ban_s and
        a ``[abuse.weights]`` table over the defaults."""
        known = {"threshold", "half_life_s", "ban_s", "max_ban_s", "weights", "exempt", "watch"}
        check_keys("[abuse]", table, known)
        weights = dict(DEFAULT_WEIGHTS)
        for kind, weight in dict(table.get("weights", {})).items():
            if kind not in DEFAULT_WEIGHTS:
                raise ConfigError(
                    f"[abuse.weights]: unknown violation {kind!r}; known: "
                    f"{', '.join(DEFAULT_WEIGHTS)}"
                )
            weights[kind] = float(weight)
        values: dict[str, Any] = {
            k: float(v) for k, v in table.items() if k not in {"weights", "exempt", "watch"}
        }
        if "exempt" in table:
            try:
                values["exempt"] = tuple(str(ip_network(n, strict=False)) for n in table["exempt"])
            except ValueError as exc:
                raise ConfigError(f"[abuse] exempt: {exc}") from exc
        policy = replace(cls(), weights=weights, **values)
        if min(policy.threshold, policy.half_life_s, policy.ban_s) <= 0:
            raise ConfigError("[abuse]: threshold, half_life_s and ban_s must be positive")
        if any(w < 0 for w in weights.values()):
            raise ConfigError("[abuse.weights]: weights must be 0 or more")
        return policy

    def exempted(self, subject: str) -> bool:
        kind, _, value = subject.partition(":")
        if kind != "ip":
            return False
        try:
            address = ip_address(value)
        except ValueError:
            return True  # no usable address: nothing to ban
        return any(address in network for network in self._exempt_networks)

    @cached_property
    def _exempt_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return tuple(ip_network(n) for n in self.exempt)

    def ban_length(self, repeat: int) -> float:
        """Seconds of the ``repeat``-th ban (1 for the first)."""
        return min(self.max_ban_s, self.ban_s * 2.0 ** min(repeat - 1, 40))


@dataclass(frozen=True)
class Ban:
    subject: str
    until: float  # wall-clock seconds
    seconds: float
    repeat: int
    reason: str


@dataclass
class _Score:
    value: float
    at: float


class Violations:
    MAX_SUBJECTS = 200_000
    # How much sooner than told a caller may come back and still count as having waited:
    # clients' timers and the network are not exact.
    EARLY_S = 0.1

    def __init__(
        self,
        policy: ViolationPolicy | None = None,
        clock: Callable[[], float] = time.time,
        on_ban: Callable[[Ban], None] = lambda _: None,
    ) -> None:
        self.policy = policy or ViolationPolicy()
        self.clock = clock
        self.on_ban = on_ban
        self._scores: dict[str, _Score] = {}
        self._bans: dict[str, Ban] = {}
        self._repeats: dict[str, int] = {}
        self._told: dict[tuple[str, str], float] = {}  # (subject, kind) -> come back after

    def score(self, subject: str) -> float:
        entry = self._scores.get(subject)
        if entry is None:
            return 0.0
        elapsed = max(0.0, self.clock() - entry.at)
        return entry.value * math.pow(0.5, elapsed / self.policy.half_life_s)

    def record(self, kind: str, *subjects: str, retry_after: float | None = None) -> list[Ban]:
        """Count a violation against each subject; the bans it started, if any. A refusal that
        told the caller to come back in ``retry_after`` seconds counts against a subject only
        if an earlier one of the same kind told it to wait longer than it did."""
        weight = self.policy.weights.get(kind, 1.0)
        if weight <= 0:
            return []
        now = self.clock()
        started = []
        for subject in subjects:
            if self.policy.exempted(subject):
                continue
            if retry_after is not None:
                told = self._told.get((subject, kind), -math.inf)
                self._told[(subject, kind)] = max(told, now + retry_after)
                if now + self.EARLY_S >= told:  # it waited as told (or was never told)
                    continue
            value = self.score(subject) + weight
            if value >= self.policy.threshold and self.banned(subject) is None:
                repeat = self._repeats.get(subject, 0) + 1
                self._repeats[subject] = repeat
                seconds = self.policy.ban_length(repeat)
                ban = Ban(subject, now + seconds, seconds, repeat, kind)
                self._bans[subject] = ban
                self._scores.pop(subject, None)
                log.warning(
                    "temporary ban",
                    extra={"subject": subject, "seconds": seconds, "repeat": repeat, "last": kind},
                )
                self.on_ban(ban)
                started.append(ban)
            else:
                self._scores[subject] = _Score(value, now)
        if len(self._scores) > self.MAX_SUBJECTS or len(self._told) > self.MAX_SUBJECTS:
            self._forget()
        return started

    def banned(self, *subjects: str) -> Ban | None:
        """The longest ban in force on any of ``subjects``."""
        now = self.clock()
        found = [b for s in subjects if (b := self._bans.get(s)) is not None and b.until > now]
        return max(found, key=lambda ban: ban.until, default=None)

    def _forget(self) -> None:
        """Drop scores that have decayed to almost nothing, and waits that are over."""
        for subject in [s for s in self._scores if self.score(s) < 0.01]:
            del self._scores[subject]
        now = self.clock()
        self._told = {told: until for told, until in self._told.items() if until > now}
