"""Violation scores and temporary bans: the maths (property-based) and a scripted free-tier
scraper against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.abuse.violations import ViolationPolicy, Violations
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.exceptions import ConfigError
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


POLICY = ViolationPolicy(threshold=10, half_life_s=60, ban_s=100, max_ban_s=10_000)


@given(st.integers(1, 9))
def test_no_ban_below_the_threshold(violations: int) -> None:
    scores = Violations(POLICY, Clock())
    for _ in range(violations):
        assert scores.record("rate_limited", "user:a") == []
    assert scores.banned("user:a") is None


@given(st.floats(0, 600))
def test_scores_halve_every_half_life(elapsed: float) -> None:
    clock = Clock()
    scores = Violations(POLICY, clock)
    for _ in range(8):
        scores.record("rate_limited", "user:a")
    clock.now += elapsed
    assert scores.score("user:a") == pytest.approx(8 * 0.5 ** (elapsed / 60))


@given(st.integers(1, 12))
def test_repeated_bans_double_up_to_the_cap(repeats: int) -> None:
    clock = Clock()
    scores = Violations(POLICY, clock)
    lengths = []
    for _ in range(repeats):
        bans = []
        while not bans:
            bans = scores.record("concurrency", "user:a", "ip:198.51.100.1")
        lengths.append(bans[0].seconds)
        assert scores.banned("user:a") is not None
        clock.now = bans[0].until + 1
        assert scores.banned("user:a") is None
    assert lengths == [min(10_000, 100 * 2**i) for i in range(repeats)]


def test_a_client_that_waits_as_told_is_never_scored_for_being_refused() -> None:
    """The OpenAI SDKs retry a 429 twice, waiting as ``retry-after`` says: a program that runs
    more requests at once than its plan allows is refused, call after call, and never banned."""
    clock = Clock()
    scores = Violations(POLICY, clock)
    for _ in range(200):  # three attempts a call, a second apart, for a while
        assert scores.record("concurrency", "user:a", "ip:198.51.100.1", retry_after=1.0) == []
        clock.now += 1.0
    assert scores.score("user:a") == scores.score("ip:198.51.100.1") == 0.0
    # Coming back early is scored, from the second refusal on: ten weigh 2 each past the
    # threshold of 10 (the first told it to wait; the fifth scored bans).
    bans = [scores.record("concurrency", "user:a", retry_after=1.0) for _ in range(6)]
    assert [len(b) for b in bans] == [0, 0, 0, 0, 0, 1]
    assert bans[-1][0].reason == "concurrency"


@settings(max_examples=200)
@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 5.0]), max_size=40))
def test_a_refusal_is_scored_when_it_came_sooner_than_the_last_one_said(gaps: list[float]) -> None:
    """Against a model: refusal i (after ``gaps[i]`` seconds) is scored when an earlier one
    told the caller to wait longer than that (with 0.1 s of slack)."""
    clock = Clock()
    policy = ViolationPolicy(threshold=1e9, half_life_s=1e12)  # no decay, no ban: a count
    scores = Violations(policy, clock)
    told: float | None = None
    expected = 0
    for gap in gaps:
        clock.now += gap
        scores.record("rate_limited", "user:a", retry_after=1.0)
        if told is not None and clock.now + 0.1 < told:
            expected += 1
        told = clock.now + 1.0
    assert scores.score("user:a") == pytest.approx(expected)


def test_loopback_is_never_banned_and_weights_come_from_config() -> None:
    policy = ViolationPolicy.from_config(
        {"threshold": 3, "weights": {"login_failed": 0.5}, "exempt": ["10.0.0.0/8"]}
    )
    scores = Violations(policy, Clock())
    for _ in range(10):
        scores.record("rate_limited", "ip:10.1.2.3")
    assert scores.banned("ip:10.1.2.3") is None
    for _ in range(5):
        scores.record("login_failed", "ip:203.0.113.9")
    assert scores.banned("ip:203.0.113.9") is None  # 2.5 < 3
    scores.record("login_failed", "ip:203.0.113.9")
    assert scores.banned("ip:203.0.113.9") is not None
    with pytest.raises(ConfigError, match="unknown violation"):
        ViolationPolicy.from_config({"weights": {"sneezing": 1}})
    with pytest.raises(ConfigError, match="unknown keys"):
        ViolationPolicy.from_config({"treshold": 1})


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose abuse threshold is low: 10 rate-limit refusals ban for 2 s."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    data_dir: Path = tmp_path_factory.mktemp("strict")
    config = data_dir / "lamplighter.toml"
    config.write_text(
        "[plans.trickle]\nrequests_per_minute = 1\n\n[plans.webonly]\nbrowser_only = true\n\n"
        "[abuse]\nthreshold = 10\nban_s = 2\n"
    )
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    with LiveServer(settings, backends) as live:
        yield live


def test_a_scripted_scraper_is_banned_with_its_address(strict: LiveServer) -> None:
    _, key = strict.new_user(plan="trickle")
    scraper = {"authorization": f"Bearer {key}", "x-forwarded-for": "203.0.113.50"}
    body = {"model": SCRIPTED, "messages": [{"role": "user", "content": "page 1"}]}
    statuses = []
    with httpx.Client(base_url=strict.base_url, headers=scraper, timeout=30) as http:
        for _ in range(15):
            response = http.post("/v1/chat/completions", json=body)
            statuses.append(response.status_code)
            if response.status_code == 403:
                break
        banned = response
    # It never waits as told: every refusal after the first is scored, and ten reach the
    # threshold (a hair later, as the score decays meanwhile).
    refused = statuses[1:-1]
    assert statuses[0] == 200 and set(refused) == {429} and 11 <= len(refused) <= 12
    assert statuses[-1] == 403
    error = banned.json()["error"]
    assert error["code"] == "temporarily_banned" and "rate limited" in error["message"]
    assert 0 < float(banned.headers["retry-after"]) <= 2
    # The address is banned too: another account from it is turned away.
    _, other = strict.new_user(plan="trickle")
    elsewhere = {"authorization": f"Bearer {other}", "x-forwarded-for": "203.0.113.50"}
    assert (
        httpx.post(
            strict.base_url + "/v1/chat/completions", json=body, headers=elsewhere
        ).status_code
        == 403
    )
    # From another address, that account is fine.
    fresh = {"authorization": f"Bearer {other}", "x-forwarded-for": "198.18.7.7"}
    assert (
        httpx.post(strict.base_url + "/v1/chat/completions", json=body, headers=fresh).status_code
        == 200
    )
    metrics = httpx.get(strict.base_url + "/metrics").text
    assert 'lamplighter_bans_total{scope="user"} 1.0' in metrics
    assert 'lamplighter_violations_total{kind="rate_limited"}' in metrics


def test_a_browser_only_plan_refuses_scripts(strict: LiveServer) -> None:
    from tests.web.conftest import Browserless, new_person

    person = new_person(strict, plan="webonly")
    key = strict.call(lambda s: s.accounts.create_key(person.email)).secret
    refused = httpx.post(
        strict.base_url + "/v1/chat/completions",
        json={"model": SCRIPTED, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}", "x-forwarded-for": "203.0.113.61"},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "browser_only_plan"
    web = Browserless(strict.base_url)
    web.login(person)
    body = {"content": "hello", "model": SCRIPTED}
    headers = {"x-csrf-token": web.csrf}
    scripted = web.http.post("/api/chat", json=body, headers=headers)
    assert scripted.status_code == 403  # a cookie without a browser's Sec-Fetch headers
    browser = web.http.post("/api/chat", json=body, headers={**headers, "sec-fetch-mode": "cors"})
    assert browser.status_code == 200 and "event: done" in browser.text
    web.close()
    metrics = httpx.get(strict.base_url + "/metrics").text
    assert 'lamplighter_violations_total{kind="non_browser"} 2.0' in metrics
