"""Coordinated abuse: the watch's patterns (unit, property-based) and attacks on a live server —
a prompt flood across 50 accounts, account farming from one network, throwaway addresses — each
ending in the review queue, where one click suspends every account involved."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from lamplighter.abuse import watch as watch_module
from lamplighter.abuse.watch import Watch, WatchPolicy, disposable, fingerprint
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.web.conftest import PASSWORD, Browserless, Person, form_token


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_near_identical_prompts_share_a_fingerprint() -> None:
    assert fingerprint("Write 5 jokes about cats!!") == fingerprint("write 7 jokes   about CATS")
    assert fingerprint("write jokes about cats") != fingerprint("write jokes about dogs")


def test_disposable_domains_and_their_subdomains() -> None:
    assert disposable("x@mailinator.com") and disposable("x@eu.mailinator.com")
    assert not disposable("ada@example.org")


def test_a_flood_is_reported_once_with_every_account() -> None:
    watch = Watch(WatchPolicy(flood_accounts=5), Clock())
    found = [f for i in range(8) for f in watch.prompt(f"u{i}", f"Summarise page {i} please")]
    assert [f.kind for f in found] == ["prompt_flood"]
    assert found[0].evidence["accounts"] == ["u0", "u1", "u2", "u3", "u4"]


def test_accounts_that_asked_before_the_window_do_not_make_a_flood() -> None:
    clock = Clock()
    watch = Watch(WatchPolicy(flood_accounts=3, flood_window_s=600), clock)
    for user in ("u0", "u1"):
        assert watch.prompt(user, "the same question") == []
    clock.now += 601
    assert watch.prompt("u2", "the same question") == []  # u0 and u1 asked too long ago
    clock.now += 1
    [finding] = watch.prompt("u3", "the same question") + watch.prompt("u4", "the same question")
    assert finding.evidence["accounts"] == ["u2", "u3", "u4"]


def _letters(number: int) -> str:
    """A word per number: the fingerprint ignores digits."""
    return "".join(chr(ord("a") + int(digit)) for digit in str(number))


def test_memory_does_not_grow_with_distinct_prompts() -> None:
    clock = Clock()
    watch = Watch(WatchPolicy(flood_window_s=600), clock)
    watch.prompt("u0", "the first question")
    watch_file = watch_module.__file__
    tracemalloc.start()
    try:
        for n in range(20_000):
            clock.now += 0.01
            watch.prompt(f"u{n % 7}", f"a question of its own, number {_letters(n)}")
        # Only what the watch allocated: the session's live server runs on another thread.
        held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, watch_file)])
    finally:
        tracemalloc.stop()
    grown = sum(stat.size for stat in held.statistics("filename"))
    assert grown < 50_000  # bytes, for 20,000 prompts still in the window (a dict took 2.9 MB)


def test_a_full_table_forgets_its_oldest_lone_prompts_first() -> None:
    def flood_after(others: int) -> list[str]:
        clock = Clock()
        watch = Watch(WatchPolicy(flood_accounts=5), clock, sightings=64)
        watch.prompt("u0", "the same question")
        for n in range(others):
            clock.now += 0.01
            watch.prompt("u9", f"a question of its own, number {_letters(n)}")
        found = [f for u in ("u1", "u2", "u3", "u4") for f in watch.prompt(u, "the same question")]
        return [a for f in found for a in f.evidence["accounts"]]

    assert flood_after(20) == ["u0", "u1", "u2", "u3", "u4"]
    assert flood_after(1000) == []  # u0's question gave way; four accounts are no flood yet


Ask = tuple[int, int, float]  # account, prompt, seconds since the previous question


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.floats(0, 200)), max_size=80))
# A flood that goes on is reported again once its window has passed (it once waited an hour).
@example([(0, 0, 0.0), (1, 0, 0.0), (2, 0, 0.0), (0, 0, 200.0), (1, 0, 200.0), (2, 0, 200.0)])
def test_floods_match_a_watch_that_remembers_everything(asks: list[Ask]) -> None:
    """With room for every prompt, the fixed table finds exactly the floods a plain record of
    every question finds: the same prompts, at the same question, with the same accounts."""
    policy = WatchPolicy(flood_accounts=3, flood_window_s=600, timing_requests=1000)
    clock = Clock()
    watch = Watch(policy, clock, sightings=1024)
    asked: dict[int, dict[str, float]] = {}
    reported: dict[int, float] = {}
    for index, (account, prompt, pause) in enumerate(asks):
        clock.now += pause
        user, text = f"u{account}", f"question number {'x' * prompt}"
        got = {frozenset(f.evidence["accounts"]) for f in watch.prompt(user, text)}
        asked.setdefault(prompt, {})[user] = clock.now
        recent = {u for u, at in asked[prompt].items() if at > clock.now - policy.flood_window_s}
        expected = set()
        if len(recent) >= policy.flood_accounts and (
            prompt not in reported or clock.now - reported[prompt] >= policy.flood_window_s
        ):
            reported[prompt] = clock.now
            expected = {frozenset(recent)}
        assert got == expected, f"question {index}"


@given(st.lists(st.floats(0.5, 5.0), min_size=12, max_size=12))
def test_human_pauses_are_not_bot_timing(pauses: list[float]) -> None:
    gaps = pauses[1:]  # the first pause comes before the first request
    spread = max(gaps) / min(gaps)
    clock = Clock()
    watch = Watch(WatchPolicy(timing_requests=12, timing_max_cv=0.1), clock)
    found = []
    for index, pause in enumerate(pauses):
        clock.now += pause
        found += watch.prompt("human", f"question {index} about something else entirely {index}")
    bots = [f for f in found if f.kind == "bot_timing"]
    if spread > 1.6:  # pauses this uneven are far from metronomic
        assert bots == []


def test_metronomic_requests_are_bot_timing() -> None:
    clock = Clock()
    watch = Watch(WatchPolicy(timing_requests=12), clock)
    found = []
    for index in range(12):
        clock.now += 2.0 + (0.01 if index % 2 else 0)
        found += watch.prompt("script", f"distinct question number {'x' * index}")
    [bot] = [f for f in found if f.kind == "bot_timing"]
    assert bot.subject == "user:script" and bot.evidence["cv"] < 0.1


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    data_dir: Path = tmp_path_factory.mktemp("watched")
    config = data_dir / "lamplighter.toml"
    config.write_text("[plans.free]\nrequests_per_minute = 1000\n")
    settings = make_settings(data_dir, config=config, embedded_engine=False, signups="open")
    with LiveServer(settings, backends) as live:
        email = "moderator@example.org"
        live.call(lambda s: s.accounts.create_user(email, admin=True))
        yield live, live.call(lambda s: s.accounts.create_key(email)).secret


def _admin(server: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"})


def _reports(admin: httpx.Client, kind: str, status: str = "open") -> list[dict[str, Any]]:
    found = admin.get("/api/admin/reports", params={"status": status}).json()["data"]
    return [report for report in found if report["kind"] == kind]


def test_a_prompt_flood_across_50_accounts_is_caught_and_stopped_in_one_click(
    watched: tuple[LiveServer, str],
) -> None:
    server, admin_key = watched
    keys = [server.new_user(plan="free")[1] for _ in range(50)]
    for index, key in enumerate(keys):
        server.client(key).chat.completions.create(
            model=SCRIPTED,
            messages=[{"role": "user", "content": f"Buy cheap watches at shop {index}!!"}],
        )
    with _admin(server, admin_key) as admin:
        [report] = _reports(admin, "prompt_flood")
        assert report["response"] == "throttle" and len(report["evidence"]["accounts"]) == 5
        assert "cheap watches" in report["evidence"]["sample"]
        resolved = admin.post(
            f"/api/admin/reports/{report['id']}/resolve",
            json={"action": "suspend", "reason": "spam flood", "days": 7},
        )
        assert resolved.json()["status"] == "actioned"
        assert "(5 accounts)" in resolved.json()["resolution"]
        audit = admin.get("/api/admin/audit", params={"limit": 1}).json()["data"][0]
        assert audit["action"] == "report.suspend" and len(audit["details"]["accounts"]) == 5
        assert (
            admin.post(
                f"/api/admin/reports/{report['id']}/resolve",
                json={"action": "dismiss", "reason": "x"},
            ).status_code
            == 404
        )  # already resolved
    for key in keys[:5]:  # the accounts the evidence named are out
        with pytest.raises(openai.AuthenticationError):
            server.client(key).models.list()
    assert server.client(keys[-1]).models.list().data  # later flooders were not in the report
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'lamplighter_abuse_findings_total{kind="prompt_flood"} 1.0' in metrics


def _signup(server: LiveServer, email: str, address: str) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, headers={"x-forwarded-for": address}) as http:
        token = form_token(http.get("/signup").text)
        return http.post(
            "/signup", data={"email": email, "password": PASSWORD, "csrf_token": token}
        )


def test_account_farming_from_one_network_is_throttled_and_reported(
    watched: tuple[LiveServer, str],
) -> None:
    server, admin_key = watched
    farm = [f"farm-{uuid.uuid4().hex[:6]}@example.org" for _ in range(6)]
    statuses = [
        _signup(server, email, f"198.51.100.{index + 10}").status_code
        for index, email in enumerate(farm)
    ]
    assert statuses == [303] * 5 + [429]
    assert _signup(server, farm[-1], "192.0.2.77").status_code == 303  # another network
    with _admin(server, admin_key) as admin:
        [report] = _reports(admin, "network_signups")
        assert report["subject"] == "network:198.51.100.0/24"
        assert report["evidence"]["accounts"] == farm[:5]
        admin.post(
            f"/api/admin/reports/{report['id']}/resolve", json={"action": "ban", "reason": "farm"}
        )
    login = Browserless(server.base_url)
    assert login.login(Person(farm[0], PASSWORD)).status_code == 401  # banned
    login.close()


def test_throwaway_addresses_cannot_sign_up(watched: tuple[LiveServer, str]) -> None:
    response = _signup(watched[0], "someone@mailinator.com", "203.0.113.200")
    assert response.status_code == 400 and "disposable email" in response.text


def test_resolving_spares_admins_and_never_shortens_a_ban(watched: tuple[LiveServer, str]) -> None:
    server, admin_key = watched
    admin_email = f"admin-{uuid.uuid4().hex[:6]}@example.org"
    server.call(lambda s: s.accounts.create_user(admin_email, admin=True))
    banned_email, banned_key = server.new_user(plan="free")
    server.call(lambda s: s.accounts.suspend(banned_email, "earlier", until=None, banned=True))
    from lamplighter.abuse.watch import Finding

    finding = Finding(
        "network_signups", "network:203.0.113.0/24", "throttle",
        {"accounts": [admin_email, banned_email]},
    )  # fmt: skip
    server.call(lambda s: s.reviews.file([finding]))
    with _admin(server, admin_key) as admin:
        [report] = [r for r in _reports(admin, "network_signups") if admin_email in str(r)]
        done = admin.post(
            f"/api/admin/reports/{report['id']}/resolve",
            json={"action": "suspend", "reason": "sweep", "days": 1},
        ).json()
        assert done["resolution"] == "suspend for 1 days: sweep (1 accounts)"
        entry = admin.get("/api/admin/audit", params={"limit": 1}).json()["data"][0]
        assert entry["details"]["spared_admins"] == [admin_email] and entry["details"]["days"] == 1
        status = admin.get(f"/api/admin/users/{banned_email}").json()["user"]["status"]
        assert status == "banned"  # not shortened to a one-day suspension
        assert admin.get(f"/api/admin/users/{admin_email}").json()["user"]["status"] == "active"
    del banned_key
