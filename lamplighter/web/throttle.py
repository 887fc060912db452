"""Login throttling: failed attempts per account, per IP address and per network, with a
back-off that grows while the failures go on and fades once they stop.

Each failure adds one to a level that drains by one every ``decay_s`` seconds. From
``threshold`` on, the key is locked for ``base_s * 2 ** (level - threshold)`` seconds (capped).
The account key applies whether or not the account exists, so a lockout reveals nothing; while
locked, the password is not even checked, so credential stuffing costs the attacker time and the
server no argon2 work. A network is an IPv4 /24 or an IPv6 /64: attempts spread over many
addresses of one network still add up. State is per process (shared state comes with Redis).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    threshold: int
    decay_s: float = 60.0
    base_s: float = 1.0
    cap_s: float = 3600.0

    def lock(self, level: float) -> float:
        """Seconds locked after a failure that brought the level to ``level``. The level is
        rounded up: five failures within a minute count as five, though the first has begun to
        drain."""
        failures = math.ceil(level - 1e-9)
        if failures < self.threshold:
            return 0.0
        exponent = min(failures - self.threshold, 32)
        return float(min(self.cap_s, self.base_s * 2.0**exponent))


@dataclass
class _Entry:
    level: float
    at: float
    locked_until: float = 0.0


DEFAULT_RULES = {
    "account": Backoff(threshold=5),
    "ip": Backoff(threshold=20),
    "network": Backoff(threshold=60),
}


def network(address: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) an address belongs to; the address itself if unparsable."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class LoginThrottle:
    MAX_ENTRIES = 100_000

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        rules: dict[str, Backoff] | None = None,
    ) -> None:
        self.clock = clock
        self.rules = rules or DEFAULT_RULES
        self._entries: dict[tuple[str, str], _Entry] = {}

    def _keys(self, account: str, address: str) -> list[tuple[str, str]]:
        return [
            ("account", account.strip().lower()),
            ("ip", address),
            ("network", network(address)),
        ]

    def _level(self, key: tuple[str, str], now: float) -> float:
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.level - (now - entry.at) / self.rules[key[0]].decay_s)

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until an attempt for ``account`` from ``address`` is allowed (0: now)."""
        now = self.clock()
        waits = [
            entry.locked_until - now
            for key in self._keys(account, address)
            if (entry := self._entries.get(key)) is not None
        ]
        return max([0.0, *waits])

    def failed(self, account: str, address: str) -> None:
        now = self.clock()
        for key in self._keys(account, address):
            level = self._level(key, now) + 1
            lock = self.rules[key[0]].lock(level)
            entry = self._entries.setdefault(key, _Entry(level, now))
            entry.level, entry.at = level, now
            entry.locked_until = max(entry.locked_until, now + lock)
        if len(self._entries) > self.MAX_ENTRIES:
            self._forget(now)

    def succeeded(self, account: str) -> None:
        """A correct password clears the account's failures (not its address's)."""
        self._entries.pop(("account", account.strip().lower()), None)

    def _forget(self, now: float) -> None:
        """Drop entries that have drained and are not locked."""
        for key in [
            k
            for k, e in self._entries.items()
            if e.locked_until <= now and self._level(k, now) == 0
        ]:
            del self._entries[key]


def describe(seconds: float) -> str:
    """A wait as "Try again in ..." ends: "1 second", "45 seconds", "3 minutes"."""
    whole = math.ceil(seconds)
    if whole < 120:
        return f"{whole} second{'' if whole == 1 else 's'}"
    return f"{math.ceil(whole / 60)} minutes"
