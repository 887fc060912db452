"""Violation scores per user and per address, and temporary bans that grow with repetition.

Each violation (a rate-limit hit, a concurrent-stream breach, a failed login, a model the plan
does not allow, ...) adds its weight to the score of every subject it concerns (``user:<id>``,
``ip:<address>``). Scores decay exponentially with ``half_life_s``, so an honest user who trips
a limit now and then never gets near the threshold, while a script hammering the service
climbs fast. At ``threshold`` the subject is banned for ``ban_s``, doubling with each repeat up to
``max_ban_s``, and its score starts again from zero. Weights and thresholds come from the
``[abuse]`` table of the config file. State is per process (shared state comes with Redis).

A refusal that tells the caller when to come back (a 429 with ``retry-after``) counts only if the
caller came back early: the request arrived after a refusal of the same kind had been sent, and
before the time that refusal named. Each refusal answers for one return: a request that arrives
once some refusal's time has come used that one and waited as told. So requests that were
already on their way when the first refusal went out (``asyncio.gather`` of twenty calls on a
plan of four streams) are not scored, nor are their SDK retries, each of which waits for its
own ``retry-after``; a script that sends again without waiting is scored from its second wave.
Measuring from when a refusal was sent instead of when the request arrived once banned a paying
user's twelve concurrent SDK calls out of sixteen; counting any refusal since the last told
time once banned five.
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
    # Subjects banned by the same violation (a user and its address): lifted together.
    together: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Told:
    """A refusal that told the caller to come back at ``until``, sent at ``sent``."""

    sent: float
    until: float


@dataclass
class _Score:
    value: float
    at: float


class Violations:
    MAX_SUBJECTS = 200_000
    # How much sooner than told a caller may come back and still count as having waited:
    # clients' timers and the network are not exact.
    EARLY_S = 0.1
    # A refusal whose time came answers for a request that comes back within this long after;
    # later, the caller has plainly waited, and the refusal is forgotten.
    KEEP_S = 60.0
    # Refusals remembered per subject and kind: more than a program's concurrent calls, fewer
    # than a flood's. The oldest go first.
    MAX_TOLD = 1024

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
        self._told: dict[tuple[str, str], list[_Told]] = {}  # (subject, kind) -> refusals sent

    def score(self, subject: str) -> float:
        entry = self._scores.get(subject)
        if entry is None:
            return 0.0
        elapsed = max(0.0, self.clock() - entry.at)
        return entry.value * math.pow(0.5, elapsed / self.policy.half_life_s)

    def record(
        self,
        kind: str,
        *subjects: str,
        retry_after: float | None = None,
        arrived: float | None = None,
        email: str | None = None,
    ) -> list[Ban]:
        """Count a violation against each subject; the bans it started, if any. A refusal that
        tells the caller to come back in ``retry_after`` seconds counts against a subject only
        if the request (which ``arrived`` then; now if not given) came back early: see
        ``_early``. ``email``, the user's, goes into the log line of a ban."""
        weight = self.policy.weights.get(kind, 1.0)
        if weight <= 0:
            return []
        now = self.clock()
        arrived = now if arrived is None else arrived
        started = []
        for subject in subjects:
            if self.policy.exempted(subject):
                continue
            if retry_after is not None:
                early = self._early((subject, kind), arrived, now)
                self._tell((subject, kind), _Told(now, now + retry_after))
                if not early:
                    continue
            value = self.score(subject) + weight
            if value >= self.policy.threshold and self.banned(subject) is None:
                repeat = self._repeats.get(subject, 0) + 1
                self._repeats[subject] = repeat
                seconds = self.policy.ban_length(repeat)
                started.append(Ban(subject, now + seconds, seconds, repeat, kind))
                self._scores.pop(subject, None)
            else:
                self._scores[subject] = _Score(value, now)
        together = tuple(ban.subject for ban in started)
        started = [replace(ban, together=together) for ban in started]
        for ban in started:
            self._bans[ban.subject] = ban
            who = {"email": email} if email is not None and ban.subject.startswith("user:") else {}
            log.warning(
                "temporary ban",
                extra={
                    "subject": ban.subject,
                    **who,
                    "seconds": ban.seconds,
                    "repeat": ban.repeat,
                    "last": kind,
                },
            )
            self.on_ban(ban)
        if len(self._scores) > self.MAX_SUBJECTS or len(self._told) > self.MAX_SUBJECTS:
            self._forget()
        return started

    def _early(self, key: tuple[str, str], arrived: float, now: float) -> bool:
        """Whether a request that ``arrived`` then came back sooner than told, using up the
        refusal that answers for it. A refusal sent before it arrived whose time has come (the
        soonest) means it waited; else one whose time has not come (the oldest) means it came
        back early; a request that was on its way before any refusal was sent is neither."""
        told = [t for t in self._told.get(key, ()) if t.until + self.KEEP_S > now]
        seen = [t for t in told if t.sent <= arrived]
        waited = [t for t in seen if t.until <= arrived + self.EARLY_S]
        used = (
            min(waited, key=lambda t: t.until)
            if waited
            else min(seen, default=None, key=lambda t: t.sent)
        )
        if used is not None:
            told.remove(used)
        self._told[key] = told
        return used is not None and not waited

    def _tell(self, key: tuple[str, str], told: _Told) -> None:
        refusals = self._told.setdefault(key, [])
        refusals.append(told)
        del refusals[: -self.MAX_TOLD]

    def banned(self, *subjects: str) -> Ban | None:
        """The longest ban in force on any of ``subjects``."""
        now = self.clock()
        found = [b for s in subjects if (b := self._bans.get(s)) is not None and b.until > now]
        return max(found, key=lambda ban: ban.until, default=None)

    def bans(self) -> list[Ban]:
        """Every ban in force."""
        now = self.clock()
        return [ban for ban in self._bans.values() if ban.until > now]

    def impose(self, ban: Ban) -> None:
        """Hold a ban that another replica started (unless one here lasts longer)."""
        held = self.banned(ban.subject)
        if held is None or held.until < ban.until:
            self._bans[ban.subject] = ban
            self._repeats[ban.subject] = max(self._repeats.get(ban.subject, 0), ban.repeat)

    def lift(self, *subjects: str) -> list[Ban]:
        """End the bans of ``subjects`` and of those banned with them, as an operator's restore
        does: their scores, refusals and repeats are forgotten too, so the next ban (if any)
        is a first one. The bans lifted."""
        now = self.clock()
        lifted = [b for s in subjects if (b := self._bans.get(s)) is not None and b.until > now]
        cleared = set(subjects).union(*(ban.together for ban in lifted))
        for subject in cleared:
            self._bans.pop(subject, None)
            self._scores.pop(subject, None)
            self._repeats.pop(subject, None)
        self._told = {key: told for key, told in self._told.items() if key[0] not in cleared}
        return lifted

    def _forget(self) -> None:
        """Drop scores that have decayed to almost nothing, refusals and bans that are over."""
        for subject in [s for s in self._scores if self.score(s) < 0.01]:
            del self._scores[subject]
        now = self.clock()
        self._bans = {subject: ban for subject, ban in self._bans.items() if ban.until > now}
        self._told = {
            key: kept
            for key, refusals in self._told.items()
            if (kept := [t for t in refusals if t.until + self.KEEP_S > now])
        }
