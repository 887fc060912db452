"""Login throttling: the back-off maths (property-based) and attacks on a live server — one
account hammered from one address, and credential stuffing spread over a network."""

from __future__ import annotations

import itertools
import uuid

import httpx
from hypothesis import given
from hypothesis import strategies as st

from lamplighter.web.throttle import Backoff, LoginThrottle, describe, network
from tests.conftest import LiveServer
from tests.web.conftest import Person, form_token, new_person


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RULE = Backoff(threshold=5, decay_s=60, base_s=1, cap_s=3600)
WIDE = Backoff(threshold=100)


@given(st.integers(0, 4))
def test_no_lock_before_the_threshold(failures: int) -> None:
    clock = Clock()
    throttle = LoginThrottle(clock, {"account": RULE, "ip": RULE, "network": RULE})
    for _ in range(failures):
        throttle.failed("a@example.org", "198.51.100.7")
    assert throttle.retry_after("a@example.org", "198.51.100.7") == 0


@given(st.integers(5, 40))
def test_the_lock_grows_with_every_failure_and_is_capped(failures: int) -> None:
    clock = Clock()
    throttle = LoginThrottle(clock, {"account": RULE, "ip": RULE, "network": RULE})
    waits = []
    for _ in range(failures):
        throttle.failed("a@example.org", "198.51.100.7")
        waits.append(throttle.retry_after("a@example.org", "198.51.100.7"))
    assert waits[4] == 1.0  # the threshold: base_s
    assert all(b >= a for a, b in itertools.pairwise(waits))
    assert max(waits) <= RULE.cap_s
    # Once the lock has passed and the failures have drained, attempts are allowed again.
    clock.now += RULE.cap_s + failures * RULE.decay_s
    assert throttle.retry_after("a@example.org", "198.51.100.7") == 0
    throttle.failed("a@example.org", "198.51.100.7")
    assert throttle.retry_after("a@example.org", "198.51.100.7") == 0


@given(st.sampled_from(["198.51.100.1", "198.51.100.254", "2001:db8::1", "2001:db8::ffff"]))
def test_addresses_of_one_network_share_a_key(address: str) -> None:
    assert network(address) in {"198.51.100.0/24", "2001:db8::/64"}


def test_success_clears_the_account_but_not_the_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock, {"account": RULE, "ip": RULE, "network": WIDE})
    for _ in range(4):
        throttle.failed("a@example.org", "198.51.100.7")
    throttle.succeeded("a@example.org")
    throttle.failed("b@example.org", "198.51.100.8")
    assert throttle.retry_after("a@example.org", "198.51.100.9") == 0
    throttle.failed("c@example.org", "198.51.100.7")  # the address's fifth failure
    assert throttle.retry_after("z@example.org", "198.51.100.7") > 0


def _attempt(server: LiveServer, person: Person, address: str) -> httpx.Response:
    """One login through the form, from ``address`` (as a trusted proxy would report it)."""
    headers = {"x-forwarded-for": address}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        token = form_token(http.get("/login").text)
        return http.post(
            "/login",
            data={"email": person.email, "password": person.password, "csrf_token": token},
        )


def test_one_account_hammered_from_one_address_is_locked_out(server: LiveServer) -> None:
    victim = new_person(server)
    attacker = "203.0.113.10"
    for _ in range(5):
        assert _attempt(server, Person(victim.email, "guess-guess"), attacker).status_code == 401
    locked = _attempt(server, victim, attacker)  # even the right password waits now
    assert locked.status_code == 429
    assert float(locked.headers["retry-after"]) > 0
    assert "Too many login attempts. Try again in 1 second." in locked.text  # not "1 seconds"
    # An account that does not exist is locked the same way: no way to tell them apart.
    ghost = Person(f"ghost-{uuid.uuid4().hex[:8]}@example.org", "guess-guess")
    for _ in range(5):
        _attempt(server, ghost, "203.0.113.11")
    assert _attempt(server, ghost, "203.0.113.11").status_code == 429


def test_credential_stuffing_across_a_network_is_locked_out(server: LiveServer) -> None:
    """60 failures spread over 60 accounts and 60 addresses of one /24: each account and each
    address stays under its own threshold, the network does not."""
    for index in range(60):
        stranger = Person(f"stuffed-{uuid.uuid4().hex[:8]}@example.org", "hunter22")
        assert _attempt(server, stranger, f"192.0.2.{index + 1}").status_code == 401
    honest = new_person(server)
    assert _attempt(server, honest, "192.0.2.200").status_code == 429  # same network
    assert _attempt(server, honest, "198.18.0.1").status_code == 303  # elsewhere: fine


def test_a_wait_reads_in_proper_english() -> None:
    """It said "Try again in 1 seconds." on the first lock."""
    said = [describe(s) for s in (0.3, 1, 1.2, 45, 119.5, 150, 3600)]
    assert said == [
        "1 second",
        "1 second",
        "2 seconds",
        "45 seconds",
        "2 minutes",
        "3 minutes",
        "60 minutes",
    ]
