"""The operator console's Flywheel page in a real Chromium, against a real server with two scripted
models: the model leaderboard from side-by-side votes (rank, score and 95% interval bars on one
scale, the suspicious voter left out), rater trust (a histogram with the minimum marked), consent,
credits, and "Review now" clawing back an untrustworthy rater's credits.

The module's server asks for a side-by-side answer to every question while the votes are made,
then for none while the ratings are. Three honest people vote ten to two for scripted-other and
rate four shared answers truthfully; a fourth votes ten times for scripted-echo and rates every
shared answer the wrong way. Every test fails on a console error (where Chromium reports
Content-Security-Policy violations too).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select, update

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.flywheel.export import Exporter
from lamplighter.settings import Settings
from lamplighter.store.models import Comparison, Credit, Message, User, utcnow
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.web.browser import SCREENSHOTS, Tabs
from tests.web.conftest import Browserless, Person, new_person
from tests.web.test_console_browser import console

expect.set_options(timeout=15_000)

OTHER = "scripted-other"
CONFIG = f"""
[plans.roomy]
requests_per_minute = 100000

[flywheel]
verdict_rate = 0.0
side_by_side_rate = 1.0
side_by_side_variants = ["{SCRIPTED}", "{OTHER}"]

[flywheel.credits]
tokens = 100
min_evidence = 3
"""
# Truthful thumbs on the four shared answers (1 up, -1 down); the liar gives the opposite.
TRUTH = [1, -1, 1, 1]
HONEST_VOTES = 4  # per honest person: 12 in all, of which two go the other way
CONTRARIAN_VOTES = 10  # enough for the bad-voter check to test them


@dataclass
class Flywheel:
    """What the module's people did, and who they are."""

    honest: list[Browserless]
    liar: Browserless
    liar_id: str
    consenting: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's own server (it replaces the session's): two scripted models, and every
    question answered side by side."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED), ScriptedBackend(OTHER)]

    data_dir = tmp_path_factory.mktemp("console-flywheel")
    config = data_dir / "lamplighter.toml"
    config.write_text(CONFIG)
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    with LiveServer(settings, backends) as live:
        yield live


def _person(server: LiveServer, address: str, opened: list[Browserless]) -> Browserless:
    """One who lets their chats be trained on, for now: feedback earns credits only then."""
    web = Browserless(server.base_url)
    opened.append(web)
    web.http.headers["x-forwarded-for"] = address  # each person on a network of their own
    assert web.login(new_person(server)).status_code == 303
    chose = web.api("PUT", "/me/consent", json={"use_for_training": True})
    assert chose.status_code == 200, chose.text
    return web


def _read_later(server: LiveServer) -> None:
    """As if everyone had read every answer for a minute before giving feedback."""

    async def backdate(services: Any) -> None:
        async with services.db.transaction() as session:
            await session.execute(
                update(Message).values(updated_at=utcnow() - timedelta(minutes=1))
            )

    server.call(backdate)


def _side_of(server: LiveServer, comparison_id: str, model: str) -> str:
    async def variants(services: Any) -> tuple[str, str]:
        async with services.db.transaction() as session:
            found = await session.get(Comparison, uuid.UUID(comparison_id))
            return found.a_variant, found.b_variant

    a, _ = server.call(variants)
    return "a" if a == model else "b"


def _ask_pair(web: Browserless, question: str) -> str:
    events = web.chat(model=SCRIPTED, content=question)
    comparison: str = next(p for name, p in events if name == "pair")["comparison"]["id"]
    return comparison


def _user_id(server: LiveServer, web: Browserless) -> str:
    email = web.api("GET", "/me").json()["email"]

    async def find(services: Any) -> str:
        async with services.db.transaction() as session:
            return str(await session.scalar(select(User.id).where(User.email == email)))

    return server.call(find)


def _granted(server: LiveServer, user_id: str) -> int:
    async def count(services: Any) -> int:
        async with services.db.transaction() as session:
            return int(
                await session.scalar(
                    select(func.count()).where(
                        Credit.user_id == uuid.UUID(user_id), Credit.status == "granted"
                    )
                )
                or 0
            )

    return server.call(count)


@pytest.fixture(scope="module")
def flywheel(server: LiveServer) -> Iterator[Flywheel]:
    opened: list[Browserless] = []
    honest = [_person(server, f"198.51.{n}.7", opened) for n in range(3)]
    liar = _person(server, "203.0.113.9", opened)

    # Side-by-side votes: asked first, voted on a minute later (so they earn credits).
    ballots: list[tuple[Browserless, str, str]] = []  # (who, comparison, model they choose)
    for i, web in enumerate(honest):
        for n in range(HONEST_VOTES):
            comparison = _ask_pair(web, f"Compare answers about harbour {i} {n} please")
            upset = i < 2 and n == HONEST_VOTES - 1  # two of the twelve go the other way
            ballots.append((web, comparison, SCRIPTED if upset else OTHER))
    for n in range(CONTRARIAN_VOTES):
        ballots.append((liar, _ask_pair(liar, f"Compare answers about lighthouse {n}"), SCRIPTED))

    # Ratings of answers everyone was shown, with no side-by-side.
    preferences = server.app.state.services.preferences
    policy = preferences.policy
    preferences.policy = type(policy)(
        verdict_rate=0.0, side_by_side_rate=0.0, credits=policy.credits
    )
    try:
        questions = [f"Shared question {n} about storms at sea" for n in range(len(TRUTH))]
        answers = {
            id(web): [
                web.chat(model=SCRIPTED, content=q)[-1][1]["message"]["id"] for q in questions
            ]
            for web in [*honest, liar]
        }
        # Rated at once, before anyone could read it: refused.
        hasty = honest[0].chat(model=SCRIPTED, content="A question rated too soon")
        rated = honest[0].api(
            "PUT", f"/messages/{hasty[-1][1]['message']['id']}/rating", json={"rating": 1}
        )
        assert rated.status_code == 200, rated.text
    finally:
        preferences.policy = policy

    _read_later(server)
    for web, comparison, choice in ballots:
        winner = _side_of(server, comparison, choice)
        voted = web.api("PUT", f"/comparisons/{comparison}/vote", json={"winner": winner})
        assert voted.status_code == 200 and voted.json()["counted"], voted.text
    for web in [*honest, liar]:
        for answer, value in zip(answers[id(web)], TRUTH, strict=True):
            rating = -value if web is liar else value
            response = web.api("PUT", f"/messages/{answer}/rating", json={"rating": rating})
            assert response.status_code == 200, response.text

    # Two people go on allowing training on their chats; the other two stop.
    for web in (honest[2], liar):
        chose = web.api("PUT", "/me/consent", json={"use_for_training": False})
        assert chose.status_code == 200, chose.text

    yield Flywheel(honest, liar, _user_id(server, liar), consenting=2)
    for web in opened:
        web.close()


def js_round(value: float) -> int:
    """Math.round, as the page rounds scores (Python's round() rounds halves to even)."""
    return math.floor(value + 0.5)


# Where each row's interval bar and point are drawn, in pixels.
BARS = """() => [...document.querySelectorAll('[data-testid="leaderboard-row"]')].map((row) => {
    const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.right]; };
    const track = row.querySelector('[data-testid="leaderboard-interval"]');
    const [pl, pr] = box(track.querySelector('.interval-point'));
    return {
        model: row.dataset.model,
        track: box(track),
        range: box(track.querySelector('.interval-range')),
        point: (pl + pr) / 2,
    };
})"""


def test_the_leaderboard_ranks_the_preferred_model_first_with_its_interval(
    tabs: Tabs, flywheel: Flywheel, admin: Person, operator: Browserless
) -> None:
    tab = console(tabs, admin, "flywheel")
    page = tab.page
    board = operator.api("GET", "/admin/flywheel").json()["leaderboard"]
    card = page.get_by_test_id("flywheel-leaderboard")
    rows = card.get_by_test_id("leaderboard-row")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-model", OTHER)
    expect(rows.nth(0).get_by_test_id("leaderboard-rank")).to_have_text("1")
    expect(rows.nth(1)).to_have_attribute("data-model", SCRIPTED)
    expect(rows.nth(1).get_by_test_id("leaderboard-rank")).to_have_text("2")
    # The contrarian's ten votes are left out: the board counts the honest twelve, 10 to 2.
    expect(card.get_by_test_id("leaderboard-summary")).to_have_text(
        "12 votes from 3 voters counted; 10 votes from 1 suspicious voter left out."
    )
    expect(rows.nth(0).get_by_test_id("leaderboard-wlt")).to_have_text("10 / 2 / 0")
    for row, model in zip(board["models"], (OTHER, SCRIPTED), strict=True):
        assert row["model"] == model
        shown = card.locator(f'[data-testid="leaderboard-row"][data-model="{model}"]')
        expect(shown.get_by_test_id("leaderboard-score")).to_have_text(str(js_round(row["score"])))
        expect(shown.locator(".interval-text")).to_have_text(
            f"{js_round(row['lower'])}\u2013{js_round(row['upper'])}"
        )

    # Each interval is a bar around its point, on one scale shared by both rows.
    bars = {bar["model"]: bar for bar in page.evaluate(BARS)}
    top, bottom = bars[OTHER], bars[SCRIPTED]
    assert top["track"] == bottom["track"]
    for bar in (top, bottom):
        left, right = bar["range"]
        assert right - left > 4, bar
        assert left - 1 <= bar["point"] <= right + 1, bar
        assert bar["track"][0] <= left and right <= bar["track"][1], bar
    assert top["range"][0] > bottom["range"][1], "the intervals should not overlap"

    # The contrarian is listed, by a short id, agreeing with the board on none of their votes.
    suspicious = card.get_by_test_id("suspicious-voters")
    expect(suspicious.get_by_test_id("suspicious-count")).to_have_text("1")
    suspicious.locator("summary").click()
    voter = suspicious.get_by_test_id("suspicious-voter")
    expect(voter).to_have_count(1)
    expect(voter).to_have_attribute("data-voter", flywheel.liar_id)
    expect(voter.locator(".voter-id")).to_have_text(flywheel.liar_id[:8])
    expect(voter.locator("td").nth(0)).to_have_text(str(CONTRARIAN_VOTES))
    expect(voter.locator("td").nth(1)).to_have_text("0%")
    expect(voter.locator("td").nth(2)).to_have_text(re.compile(r"^[5-9]\d%$"))
    expect(voter.locator("td").nth(3)).to_have_text(re.compile(r"^(<0\.0001|0\.00\d+)$"))

    # More bootstrap rounds on demand: the same ranking.
    card.get_by_test_id("leaderboard-refine").click()
    expect(card.get_by_test_id("leaderboard-rounds")).to_have_text(
        "Intervals from 1,000 bootstrap rounds."
    )
    expect(rows.nth(0)).to_have_attribute("data-model", OTHER)
    expect(rows.nth(0).get_by_test_id("leaderboard-rank")).to_have_text("1")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()


def trust_bars(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.get_by_test_id("trust-bar").evaluate_all(
        """(bars) => bars.map((g) => {
            const bar = g.querySelector('rect.bar');
            const hit = g.querySelector('rect.bar-hit').getBoundingClientRect();
            return {count: Number(g.dataset.count), tone: bar ? bar.classList[1] : null,
                    left: hit.left, right: hit.right};
        })"""
    )
    return found


def test_consent_rater_trust_credits_and_exports_are_shown(
    tabs: Tabs, server: LiveServer, flywheel: Flywheel, admin: Person, tmp_path: Path
) -> None:
    async def users(services: Any) -> int:
        async with services.db.transaction() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    everyone = server.call(users)
    tab = console(tabs, admin, "flywheel")
    page = tab.page
    expect(page.get_by_test_id("consent-rate").locator(".big-value")).to_have_text(
        f"{js_round(100 * flywheel.consenting / everyone)}%"
    )

    trust = page.get_by_test_id("flywheel-trust")
    expect(trust.get_by_test_id("trust-raters")).to_have_text("4")
    expect(trust.get_by_test_id("trust-checked")).to_have_text("4")
    expect(trust.get_by_test_id("trust-below")).to_have_text("1")
    expect(trust.get_by_test_id("trust-groups")).to_have_text("0")
    expect(trust.get_by_test_id("trust-bar")).to_have_count(5)
    bars = trust_bars(page)
    # The liar sits in [0.2, 0.4), under the minimum; the honest three in [0.8, 1].
    assert [bar["count"] for bar in bars] == [0, 1, 0, 0, 3]
    assert [bar["tone"] for bar in bars] == [None, "c4", None, None, "c2"]
    threshold = trust.get_by_test_id("trust-threshold")
    expect(threshold).to_have_attribute("data-value", "0.5")
    expect(threshold).to_contain_text("minimum 0.5")
    line = threshold.locator("line").bounding_box()
    assert line is not None
    middle = bars[2]  # [0.4, 0.6): the minimum is its middle
    assert abs(line["x"] + line["width"] / 2 - (middle["left"] + middle["right"]) / 2) < 2

    credits = page.get_by_test_id("flywheel-credits")
    # Ten votes and four ratings for each of the four people, and one rating too soon.
    expect(credits.get_by_test_id("credits-refused").locator(".big-value")).to_have_text("1")
    expect(credits.get_by_test_id("credits-granted")).to_contain_text("granted")
    granted = int(credits.get_by_test_id("credits-granted").locator(".big-value").inner_text())
    clawed = int(credits.get_by_test_id("credits-clawed-back").locator(".big-value").inner_text())
    assert granted + clawed == 3 * (HONEST_VOTES + len(TRUTH)) + CONTRARIAN_VOTES + len(TRUTH)
    expect(credits.get_by_test_id("credits-granted").locator(".big-note")).to_have_text(
        re.compile(r"^\d[\d.]*k? tokens$")
    )
    exports = page.get_by_test_id("flywheel-exports")
    expect(exports).to_contain_text("Not collected yet")
    expect(page.get_by_test_id("admin-error")).to_be_hidden()

    report = server.call(
        lambda s: Exporter(s.db, consent_default=False).run("votes", tmp_path, format="parquet")
    )
    page.reload()
    row = exports.get_by_test_id("export-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("votes.parquet")
    expect(row.locator("td.num")).to_have_text(str(report.rows))
    expect(row).to_contain_text(report.sha256[:12])


def test_review_now_claws_back_the_untrustworthy_raters_credits(
    tabs: Tabs, server: LiveServer, flywheel: Flywheel, admin: Person
) -> None:
    held = _granted(server, flywheel.liar_id)
    assert held == CONTRARIAN_VOTES + len(TRUTH)
    tab = console(tabs, admin, "flywheel")
    page = tab.page
    credits = page.get_by_test_id("flywheel-credits")
    expect(credits.get_by_test_id("credits-granted")).to_be_visible()
    page.get_by_test_id("review-now").click()
    result = page.get_by_test_id("review-result")
    expect(result).to_be_visible()
    expect(result.get_by_test_id("review-summary")).to_contain_text(
        "4 raters, 4 checked, 1 untrusted, 0 sock-puppet groups."
    )
    clawed = result.locator('[data-reason="low_trust"]')
    expect(clawed).to_contain_text("Clawed back: low trust")
    expect(clawed.locator(".bar-value")).to_have_text(str(held))
    expect(page.get_by_test_id("review-now")).to_be_enabled()
    # The page reloads its figures: the credits card shows what was taken back.
    expect(credits.get_by_test_id("credits-clawed-back").locator(".big-value")).to_have_text(
        str(held)
    )
    assert _granted(server, flywheel.liar_id) == 0
    page.get_by_test_id("suspicious-voters").locator("summary").click()
    expect(page.get_by_test_id("suspicious-voter")).to_be_visible()
    expect(page.get_by_test_id("admin-error")).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header back on top
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-flywheel.png"), full_page=True)
