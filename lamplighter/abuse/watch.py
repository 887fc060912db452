"""Coordinated abuse: patterns no single request shows, found over sliding windows.

- **Disposable email** signups (the ``disposable-email-domains`` list, MIT-licensed, from PyPI).
- **Many accounts from one network**: more than ``signups_per_network`` signups from one /24
  (IPv6 /64) within ``signup_window_s``; further signups from it wait out the window.
- **Prompt floods**: the same prompt, after normalising case, digits, punctuation and spacing,
  from ``flood_accounts`` or more accounts within ``flood_window_s``.
- **Bot-like timing**: ``timing_requests`` requests from one account at intervals so regular
  (coefficient of variation below ``timing_max_cv``) that no person typed them.

Each pattern yields a :class:`Finding` with its evidence and a graded response (throttle,
verify, suspend) that goes to the admin review queue. State is per process and bounded; the
prompts of the flood window, which grow with traffic, sit in a table of fixed size
(:class:`Sightings`), so the watch's memory does not grow with traffic.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS

from lamplighter.exceptions import ConfigError
from lamplighter.settings import check_keys
from lamplighter.web.throttle import network


@dataclass(frozen=True)
class Finding:
    kind: str  # disposable_email | network_signups | prompt_flood | bot_timing
    subject: str  # what the finding is about: email:..., network:..., prompt:..., user:...
    response: str  # throttle | verify | suspend
    evidence: dict[str, Any] = field(default_factory=dict)


def fingerprint(text: str) -> int:
    """Near-identical prompts share a fingerprint: case, digits, punctuation and spacing are
    ignored ("Write 5 jokes!!" and "write 7 jokes" match). 64 bits, kept as an int: the watch
    holds one per distinct prompt of its window, and an int costs half a hex string."""
    words = re.sub(r"[\W\d_]+", " ", text.lower()).split()
    return int.from_bytes(hashlib.sha256(" ".join(words).encode()).digest()[:8])


def disposable(email: str) -> bool:
    domain = email.rpartition("@")[2].lower()
    parts = domain.split(".")
    # Subdomains of a disposable domain are disposable too.
    return any(".".join(parts[i:]) in DISPOSABLE_DOMAINS for i in range(len(parts) - 1))


@dataclass
class WatchPolicy:
    signup_window_s: float = 3600.0
    signups_per_network: int = 5
    flood_window_s: float = 600.0
    flood_accounts: int = 5
    timing_requests: int = 12
    timing_max_cv: float = 0.1

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> WatchPolicy:
        """The ``[abuse.watch]`` table."""
        known = {f.name: f.type for f in fields(cls)}
        check_keys("[abuse.watch]", table, known)
        values: dict[str, Any] = {
            k: (int(v) if known[k] == "int" else float(v)) for k, v in table.items()
        }
        policy = cls(**values)
        if policy.signups_per_network < 1 or policy.flood_accounts < 2:
            raise ConfigError("[abuse.watch]: signups_per_network >= 1, flood_accounts >= 2")
        if policy.timing_requests < 3:
            raise ConfigError("[abuse.watch]: timing_requests must be at least 3")
        return policy


class Sightings:
    """Who last asked each prompt (by fingerprint) and when, in a table of fixed size.

    Most prompts are asked once, and a flood window of them in a dict grew with traffic
    (100,000 prompts took 12 MB and churned the garbage collector). This table is allocated
    once: ``slots`` fingerprints, times and account references in three flat arrays, 24 bytes a
    slot. A fingerprint lives in one of ``PROBE`` slots from its value; when every one of them
    holds a prompt still in the window, the one asked longest ago gives way, so a window with
    more distinct prompts than slots forgets its oldest lone prompts first.
    """

    PROBE = 8

    def __init__(self, slots: int) -> None:
        size = 1 << max(self.PROBE, slots - 1).bit_length()  # a power of two, for the mask
        self._mask = size - 1
        self._keys = array("Q", bytes(8 * size))
        self._when = array("d", bytes(8 * size))  # 0.0: never used
        self._who: list[str | None] = [None] * size

    def see(self, key: int, user: str, now: float, since: float) -> tuple[str, float] | None:
        """Record that ``user`` asked ``key`` at ``now``; the other account that asked it after
        ``since`` (and when), if there was one."""
        keys, when, who = self._keys, self._when, self._who
        free, oldest = -1, math.inf
        for step in range(self.PROBE):
            slot = (key + step) & self._mask
            if keys[slot] == key and when[slot] > since:
                earlier = who[slot]
                asked = when[slot]
                who[slot], when[slot] = user, now
                return None if earlier == user or earlier is None else (earlier, asked)
            if when[slot] < oldest:  # a lapsed slot is older than any in the window
                free, oldest = slot, when[slot]
        keys[free], when[free], who[free] = key, now, user
        return None


class Watch:
    MAX_KEYS = 100_000
    SIGHTINGS = 1 << 17  # 3 MB; a window of up to ~100,000 distinct prompts is remembered whole
    SWEEP_S = 60.0

    def __init__(
        self,
        policy: WatchPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sightings: int = SIGHTINGS,
    ) -> None:
        self.policy = policy or WatchPolicy()
        self.clock = clock
        self._signups: dict[str, deque[tuple[float, str]]] = {}
        self._sightings = Sightings(sightings)  # prompts one account asked
        self._crowds: dict[int, dict[str, float]] = {}  # asked by several: {user: last asked}
        self._swept = self.clock()
        self._flagged: dict[tuple[str, str], float] = {}  # (kind, subject) -> when reported
        self._times: dict[str, deque[float]] = {}

    def signup_blocked(self, address: str) -> float:
        """Seconds until signups from ``address``'s network are accepted again (0: now)."""
        now = self.clock()
        recent = self._window(self._signups.get(network(address)), now, self.policy.signup_window_s)
        if len(recent) < self.policy.signups_per_network:
            return 0.0
        return recent[0][0] + self.policy.signup_window_s - now

    def signup(self, email: str, address: str) -> list[Finding]:
        now = self.clock()
        found = []
        if disposable(email):
            domain = email.rpartition("@")[2].lower()
            found.append(
                Finding("disposable_email", f"email:{email}", "verify", {"domain": domain})
            )
        net = network(address)
        recent = self._signups.setdefault(net, deque())
        recent.append((now, email))
        self._window(recent, now, self.policy.signup_window_s)
        if len(recent) >= self.policy.signups_per_network and self._first(
            "network_signups", net, self.policy.signup_window_s
        ):
            found.append(
                Finding(
                    "network_signups",
                    f"network:{net}",
                    "throttle",
                    {"accounts": [e for _, e in recent], "window_s": self.policy.signup_window_s},
                )
            )
        self._bound()
        return found

    def prompt(self, user: str, text: str) -> list[Finding]:
        """A question from ``user`` (an id): prompt floods and bot-like timing."""
        now = self.clock()
        found = []
        key = fingerprint(text)
        user = sys.intern(user)  # one string per account, however many prompts refer to it
        since = now - self.policy.flood_window_s
        crowd = self._crowds.get(key)
        if crowd is None:
            earlier = self._sightings.see(key, user, now, since)
            if earlier is not None:  # a second account: from now on the prompt has a crowd
                crowd = self._crowds[key] = {earlier[0]: earlier[1]}
        if crowd is not None:
            crowd[user] = now
            if len(crowd) >= self.policy.flood_accounts:
                for gone in [u for u, when in crowd.items() if when <= since]:
                    del crowd[gone]
                subject = f"prompt:{key:016x}"
                if len(crowd) >= self.policy.flood_accounts and self._first(
                    "prompt_flood", subject, self.policy.flood_window_s
                ):
                    found.append(
                        Finding(
                            "prompt_flood",
                            subject,
                            "throttle",
                            {"accounts": list(crowd), "sample": text[:200]},
                        )
                    )
        self._sweep(now)
        times = self._times.get(user)
        if times is None:
            times = self._times[user] = deque(maxlen=self.policy.timing_requests)
        times.append(now)
        if len(times) == times.maxlen:
            gaps = [b - a for a, b in zip(times, list(times)[1:], strict=False)]
            mean = math.fsum(gaps) / len(gaps)
            # In floats: ``statistics.pstdev`` is exact (fractions) and took 27 us a question.
            spread = math.sqrt(math.fsum((gap - mean) ** 2 for gap in gaps) / len(gaps))
            cv = spread / mean if mean > 0 else 0.0
            # Timing has no window of its own: a bot is reported again after the longest one.
            window = max(self.policy.signup_window_s, self.policy.flood_window_s)
            if cv < self.policy.timing_max_cv and self._first("bot_timing", user, window):
                found.append(
                    Finding(
                        "bot_timing",
                        f"user:{user}",
                        "verify",
                        {
                            "requests": len(times),
                            "mean_interval_s": round(mean, 3),
                            "cv": round(cv, 3),
                        },
                    )
                )
        self._bound()
        return found

    def _first(self, kind: str, subject: str, window: float) -> bool:
        """True once per (kind, subject) and ``window`` (the pattern's own), so one pattern is
        one report, and one that goes on is reported again once a window has passed."""
        now = self.clock()
        last = self._flagged.get((kind, subject))
        if last is not None and now - last < window:
            return False
        self._flagged[(kind, subject)] = now
        return True

    @staticmethod
    def _window(
        entries: deque[tuple[float, str]] | None, now: float, span: float
    ) -> deque[tuple[float, str]]:
        if entries is None:
            return deque()
        while entries and entries[0][0] <= now - span:
            entries.popleft()
        return entries

    def _sweep(self, now: float) -> None:
        """Forget crowds nobody joined within the flood window, once a minute."""
        if now - self._swept < self.SWEEP_S:
            return
        self._swept = now
        since = now - self.policy.flood_window_s
        for key in [k for k, crowd in self._crowds.items() if max(crowd.values()) <= since]:
            del self._crowds[key]

    def _bound(self) -> None:
        tables: tuple[dict[Any, Any], ...] = (
            self._signups,
            self._crowds,
            self._times,
            self._flagged,
        )
        for table in tables:
            if len(table) > self.MAX_KEYS:
                for key in list(table)[: len(table) // 2]:  # the oldest half
                    del table[key]
