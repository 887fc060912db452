"""Preference signals through the real web API of a live server: side-by-side votes, regeneration
verdicts and corrections, and the credits they earn (or do not: instant ratings, thumbs-up on
everything, sock puppets agreeing with each other)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from lamplighter.chat import completion_id, message_id_from
from lamplighter.cli import app
from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend, echo
from lamplighter.flywheel.preferences import leaks_identity
from lamplighter.settings import Settings
from lamplighter.store.models import Comparison, Credit, Message, User, utcnow
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.web.conftest import Browserless, admin_person, new_person

CONFIG = """
[plans.roomy]
requests_per_minute = 100000

[flywheel]
verdict_rate = 1.0
side_by_side_rate = 0.0

[flywheel.credits]
tokens = 100
uniform_after = 6
min_evidence = 3
"""


def other(turns: tuple[Turn, ...]) -> str:
    """The other model echoes too, but asked who it is, it names a model."""
    return "I am ChatGPT." if "who are you" in turns[-1].content.lower() else echo(turns)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED), ScriptedBackend("scripted-other", reply=other)]

    data_dir = tmp_path_factory.mktemp("preferences")
    config = data_dir / "lamplighter.toml"
    config.write_text(CONFIG)
    with LiveServer(
        make_settings(data_dir, config=config, embedded_engine=False), backends
    ) as server:
        yield server
    while OPEN:
        OPEN.pop().close()


OPEN: list[Browserless] = []


@pytest.fixture
def side_by_side(live: LiveServer) -> Iterator[None]:
    """Every new question answered twice, for the length of one test."""
    policy = live.app.state.services.preferences.policy
    live.app.state.services.preferences.policy = type(policy)(
        verdict_rate=1.0, side_by_side_rate=1.0, credits=policy.credits
    )
    yield
    live.app.state.services.preferences.policy = policy


def _web(
    live: LiveServer, address: str = "198.51.100.7", consent: bool | None = True
) -> Browserless:
    """A person logged in to the web chat; by default one who lets their chats be trained on
    (feedback earns credits only then)."""
    web = Browserless(live.base_url)
    OPEN.append(web)
    web.http.headers["x-forwarded-for"] = address
    web.login(new_person(live))
    if consent is not None:
        chose = web.api("PUT", "/me/consent", json={"use_for_training": consent})
        assert chose.status_code == 200, chose.text
    return web


def _read_later(live: LiveServer) -> None:
    """As if the person had read every answer for a minute before giving feedback."""

    async def backdate(services: Any) -> None:
        async with services.db.transaction() as session:
            await session.execute(
                update(Message).values(updated_at=utcnow() - timedelta(minutes=1))
            )

    live.call(backdate)


def _credits(live: LiveServer, web: Browserless) -> list[Credit]:
    email = web.api("GET", "/me").json()["email"]

    async def read(services: Any) -> list[Credit]:
        async with services.db.transaction() as session:
            user = await session.scalar(select(User).where(User.email == email))
            found = await session.scalars(select(Credit).where(Credit.user_id == user.id))
            return list(found.all())

    return live.call(read)


def _by_slot(events: list[tuple[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    slots: dict[str, list[tuple[str, Any]]] = {"a": [], "b": []}
    for name, payload in events:
        if isinstance(payload, dict) and payload.get("slot") in slots:
            slots[payload["slot"]].append((name, payload))
    return slots


def test_side_by_side_hides_the_models_until_the_vote(live: LiveServer, side_by_side: None) -> None:
    web = _web(live)
    events = web.chat(content="Which way to the lighthouse please")
    start = events[0][1]
    assert events[0][0] == "start" and start["side_by_side"] is True
    assert start["message"]["model"] is None
    pair = next(payload for name, payload in events if name == "pair")
    comparison = pair["comparison"]
    assert pair["message"]["model"] is None
    assert comparison["a_model"] is None and comparison["winner"] is None
    slots = _by_slot(events)
    for slot in ("a", "b"):
        done = [payload for name, payload in slots[slot] if name == "done"]
        assert len(done) == 1 and done[0]["message"]["content"].startswith("You said:")
        assert done[0]["message"]["model"] is None
    conversation = start["conversation_id"]
    tree = web.tree(conversation)
    answers = [m for m in tree["messages"] if m["role"] == "assistant"]
    assert len(answers) == 2 and all(m["model"] is None for m in answers)
    assert tree["comparisons"][0]["id"] == comparison["id"]
    # The two variants are the plan's two models, in a random order.
    _read_later(live)
    voted = web.api("PUT", f"/comparisons/{comparison['id']}/vote", json={"winner": "b"}).json()
    assert {voted["a_model"], voted["b_model"]} == {SCRIPTED, "scripted-other"}
    assert voted["counted"] is True and voted["winner"] == "b"
    tree = web.tree(conversation)
    assert tree["current_leaf_id"] == comparison["b_id"]
    assert all(m["model"] for m in tree["messages"] if m["role"] == "assistant")
    again = web.api("PUT", f"/comparisons/{comparison['id']}/vote", json={"winner": "a"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"
    assert [c.status for c in _credits(live, web)] == ["granted"]


def test_votes_that_reveal_a_model_or_come_from_strangers_do_not_count(
    live: LiveServer, side_by_side: None
) -> None:
    web, stranger = _web(live), _web(live)
    # Asked who it is, the other model names one: the vote would go to the name.
    events = web.chat(content="Who are you, really")
    comparison = next(p for n, p in events if n == "pair")["comparison"]
    path = f"/comparisons/{comparison['id']}/vote"
    assert stranger.api("PUT", path, json={"winner": "a"}).status_code == 404
    bad = web.api("PUT", path, json={"winner": "c"})
    assert bad.status_code == 400
    voted = web.api("PUT", path, json={"winner": "a"}).json()
    assert voted["counted"] is False and voted["discarded"] == "identity_leaked"
    assert _credits(live, web) == []


def test_regeneration_verdicts_are_asked_for_and_can_change(live: LiveServer) -> None:
    web = _web(live)
    first = web.chat(content="Tell me about lamps in old lighthouses")
    conversation = first[0][1]["conversation_id"]
    question = first[0][1]["user_message"]["id"]
    old = first[-1][1]["message"]["id"]
    assert first[-1][1]["ask_verdict"] is False  # a first answer is not a regeneration
    again = web.chat(conversation_id=conversation, parent_id=question)
    new = again[-1][1]["message"]["id"]
    assert again[-1][1]["ask_verdict"] is True
    refused = web.api("PUT", f"/messages/{old}/verdict", json={"verdict": "better"})
    assert refused.status_code == 400
    said = web.api("PUT", f"/messages/{new}/verdict", json={"verdict": "worse"}).json()
    assert (said["kind"], said["a_id"], said["b_id"], said["winner"]) == (
        "regeneration", old, new, "a"
    )  # fmt: skip
    changed = web.api("PUT", f"/messages/{new}/verdict", json={"verdict": "same"}).json()
    assert changed["id"] == said["id"] and changed["winner"] == "tie"
    assert len(web.tree(conversation)["comparisons"]) == 1
    # Said within a second of the answer: no credit, and saying it again earns none either.
    assert [(c.status, c.reason) for c in _credits(live, web)] == [("refused", "too_fast")]


def test_a_correction_becomes_the_answer_shown_and_a_preference(live: LiveServer) -> None:
    web, stranger = _web(live), _web(live)
    events = web.chat(content="What is a fresnel lens made of")
    conversation = events[0][1]["conversation_id"]
    original = events[-1][1]["message"]
    path = f"/messages/{original['id']}/correction"
    improved = "A Fresnel lens is made of many concentric glass prisms."
    assert stranger.api("POST", path, json={"content": improved}).status_code == 404
    same = web.api("POST", path, json={"content": original["content"]})
    assert same.status_code == 400
    made = web.api("POST", path, json={"content": improved})
    assert made.status_code == 201
    rewrite, comparison = made.json()["message"], made.json()["comparison"]
    assert rewrite["author"] == "person" and rewrite["content"] == improved
    assert rewrite["parent_id"] == original["parent_id"]
    assert (comparison["kind"], comparison["winner"], comparison["b_model"]) == (
        "correction", "b", "person"
    )  # fmt: skip
    tree = web.tree(conversation)
    assert tree["current_leaf_id"] == rewrite["id"]
    # The conversation goes on from the corrected answer.
    follow = web.chat(conversation_id=conversation, parent_id=rewrite["id"], content="And why?")
    assert follow[-1][1]["message"]["parent_id"] == follow[0][1]["user_message"]["id"]


def test_instant_and_uniform_ratings_earn_nothing(live: LiveServer) -> None:
    web = _web(live)
    answers = []
    for n in range(8):
        events = web.chat(content=f"Question number {n} about tides and moons")
        answers.append(events[-1][1]["message"]["id"])
    instant = web.api("PUT", f"/messages/{answers[0]}/rating", json={"rating": 1})
    assert instant.status_code == 200
    _read_later(live)
    for answer in answers[1:]:
        web.api("PUT", f"/messages/{answer}/rating", json={"rating": 1})
    judged = [(c.status, c.reason) for c in _credits(live, web)]
    assert judged[0] == ("refused", "too_fast")
    # From the sixth thumbs-up in a row (uniform_after = 6) on, none earns anything.
    assert judged[1:5] == [("granted", None)] * 4
    assert judged[5:] == [("refused", "same_on_everything")] * 3
    rewarded = web.api("GET", "/me").json()
    assert rewarded["credits"]["bonus_daily_tokens"] == 400
    review = live.call(lambda s: s.credits.review())
    assert review.clawed_back["same_on_everything"] == 4
    after = web.api("GET", "/me").json()
    assert after["credits"]["bonus_daily_tokens"] == 0
    assert after["credits"]["clawed_back"] == 4
    # The bonus was part of the daily limit, and left it with the claw-back.
    daily = rewarded["limits"]["tokens_per_day"]["limit"]
    assert daily - after["limits"]["tokens_per_day"]["limit"] == 400


def test_sock_puppets_cannot_vouch_for_each_other(live: LiveServer) -> None:
    """Three honest people on three networks and four accounts on one network that always agree
    rate the same answers (the scripted model answers a question the same way for everyone):
    the puppets count as one rater against three, lose their credits, and the honest keep
    theirs."""
    questions = [f"Shared question {n} about storms at sea" for n in range(6)]
    truth = [1, -1, 1, 1, -1, 1]
    honest = [_web(live, address) for address in ("203.0.113.10", "198.18.5.20", "100.64.9.30")]
    puppets = [_web(live, "192.0.2.66") for _ in range(4)]
    asked: dict[int, list[str]] = {}
    for index, web in enumerate(honest + puppets):
        asked[index] = [web.chat(content=q)[-1][1]["message"]["id"] for q in questions]
    _read_later(live)
    for index, web in enumerate(honest + puppets):
        liar = index >= len(honest)
        # Alternating isn't uniform, and a liar disagrees with the truth on every answer.
        for answer, value in zip(asked[index], truth, strict=True):
            rating = -value if liar else value
            web.api("PUT", f"/messages/{answer}/rating", json={"rating": rating})
    review = live.call(lambda s: s.credits.review())
    assert review.groups >= 1
    for web in puppets:
        assert {c.status for c in _credits(live, web)} == {"clawed_back"}
    for web in honest:
        assert {c.status for c in _credits(live, web)} == {"granted"}
    trust = live.call(lambda s: s.credits.estimate())[0]
    assert len(trust.raters) >= 7


def test_preference_bodies_are_validated(live: LiveServer) -> None:
    web = _web(live)
    answer = web.chat(content="Hello there lighthouse keeper")[-1][1]["message"]["id"]
    for path, body in [
        (f"/messages/{answer}/verdict", {"verdict": "maybe"}),
        (f"/messages/{answer}/correction", {"content": ""}),
        (f"/messages/{answer}/correction", {"content": "x", "extra": 1}),
        (f"/comparisons/{uuid.uuid4()}/vote", {"winner": "tie", "why": "no"}),
    ]:
        method = "POST" if path.endswith("correction") else "PUT"
        response = web.api(method, path, json=body)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["message"]
    missing = web.api("PUT", f"/comparisons/{uuid.uuid4()}/vote", json={"winner": "tie"})
    assert missing.status_code == 404


def test_comparisons_go_with_their_conversation(live: LiveServer) -> None:
    web = _web(live)
    events = web.chat(content="Something to compare and then delete")
    conversation = events[0][1]["conversation_id"]
    answer = events[-1][1]["message"]["id"]
    web.api("POST", f"/messages/{answer}/correction", json={"content": "A better answer."})
    assert web.api("DELETE", f"/conversations/{conversation}").status_code == 204

    async def left(services: Any) -> int:
        async with services.db.transaction() as session:
            found = await session.scalars(
                select(Comparison).where(Comparison.conversation_id == uuid.UUID(conversation))
            )
            return len(found.all())

    assert live.call(left) == 0


def test_the_leaderboard_ranks_the_model_people_prefer(
    live: LiveServer, side_by_side: None, tmp_path: Any
) -> None:
    """Votes through the page, read back through the admin API and the CLI."""
    voters = [_web(live, f"198.51.{n}.7") for n in range(3)]
    for web in voters:
        for n in range(6):
            events = web.chat(content=f"Compare answers about harbour {n} please")
            comparison = next(p for name, p in events if name == "pair")["comparison"]
            shown = web.api("GET", f"/conversations/{events[0][1]['conversation_id']}").json()
            assert shown["comparisons"][0]["a_model"] is None
            # These people prefer scripted-other's answers, five times out of six.
            voted = live.call(lambda s, c=comparison["id"]: _variants(s, c))
            preferred = "a" if voted[0] == "scripted-other" else "b"
            other = "b" if preferred == "a" else "a"
            winner = preferred if n != 5 else other
            web.api("PUT", f"/comparisons/{comparison['id']}/vote", json={"winner": winner})
    operator = Browserless(live.base_url)
    OPEN.append(operator)
    admin = admin_person(live)
    assert operator.login(admin).status_code == 303
    board = operator.http.get("/api/admin/leaderboard", params={"rounds": 200}).json()
    assert board["models"][0]["model"] == "scripted-other"
    top, bottom = board["models"]
    assert top["rank"] == 1 and top["score"] > 1000 > bottom["score"]
    assert top["lower"] <= top["score"] <= top["upper"]
    assert board["counted"] >= 18
    flywheel = operator.http.get("/api/admin/flywheel").json()
    assert flywheel["leaderboard"]["models"][0]["model"] == "scripted-other"
    assert flywheel["rater_trust"]["raters"] >= 3
    assert 0 <= flywheel["consent_rate"] <= 1
    result = CliRunner().invoke(
        app, ["leaderboard", "--json", "--rounds", "50"], env=_cli_env(live)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["models"][0]["model"] == "scripted-other"
    table = CliRunner().invoke(app, ["leaderboard", "--rounds", "50"], env=_cli_env(live))
    assert "scripted-other" in table.output and "95% interval" in table.output
    reviewed = CliRunner().invoke(app, ["credits", "review"], env=_cli_env(live))
    assert reviewed.exit_code == 0 and "raters" in reviewed.output


async def _variants(services: Any, comparison_id: str) -> tuple[str, str]:
    async with services.db.transaction() as session:
        found = await session.get(Comparison, uuid.UUID(comparison_id))
        return found.a_variant, found.b_variant


def _cli_env(live: LiveServer) -> dict[str, str]:
    return {
        "LAMPLIGHTER_DATA_DIR": str(live.settings.data_dir),
        "LAMPLIGHTER_CONFIG": str(live.settings.config),
    }


def test_verdicts_and_corrections_over_the_api(live: LiveServer) -> None:
    """The same signals from a script with an API key: asking the same thing twice is a
    regeneration (a sibling answer), which can get a verdict; any answer can be corrected."""
    _, key = live.new_user(plan="roomy")
    client = live.client(key)
    question = [{"role": "user", "content": "Name a famous lighthouse please"}]
    first = client.chat.completions.create(model=SCRIPTED, messages=question)  # type: ignore[arg-type]
    second = client.chat.completions.create(model=SCRIPTED, messages=question)  # type: ignore[arg-type]
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=live.base_url, headers=headers) as http:
        said = http.post("/api/feedback", json={"message_id": second.id, "verdict": "better"})
        assert said.status_code == 200, said.text
        comparison = said.json()["comparison"]
        assert comparison["kind"] == "regeneration" and comparison["winner"] == "b"
        assert comparison["a_id"] == str(message_id_from(first.id))
        fixed = http.post(
            "/api/feedback",
            json={"message_id": first.id, "correction": "The Tower of Hercules, in Spain."},
        )
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["correction_id"].startswith("chatcmpl-")
        both = http.post(
            "/api/feedback", json={"message_id": first.id, "rating": 1, "verdict": "same"}
        )
        assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]
        neither = http.post("/api/feedback", json={"message_id": first.id})
        assert neither.status_code == 400


def test_a_verdict_compares_with_the_answer_that_was_on_screen(
    live: LiveServer, side_by_side: None
) -> None:
    """Pick A in a side-by-side (B is newer), then regenerate: the new answer is compared with
    A, which the person was looking at, not with B."""
    web = _web(live)
    events = web.chat(content="Which lighthouse is the tallest one")
    conversation = events[0][1]["conversation_id"]
    question = events[0][1]["user_message"]["id"]
    comparison = next(p for n, p in events if n == "pair")["comparison"]
    web.api("PUT", f"/comparisons/{comparison['id']}/vote", json={"winner": "a"})
    again = web.chat(conversation_id=conversation, parent_id=question)
    assert again[-1][1]["ask_verdict"] is True
    new = again[-1][1]["message"]["id"]
    said = web.api("PUT", f"/messages/{new}/verdict", json={"verdict": "better"}).json()
    assert (said["a_id"], said["b_id"]) == (comparison["a_id"], new)


def test_a_side_by_side_answer_takes_no_regeneration_verdict(
    live: LiveServer, side_by_side: None
) -> None:
    """After a blind vote for B, "B is worse" as a regeneration verdict would contradict the
    vote (and earn a second credit): refused, in the web chat and over the API alike. A
    regeneration may be compared with the answer shown, but not before the vote: the verdict
    would name its model."""
    web = _web(live)
    events = web.chat(content="Which lighthouse keeper kept the best log")
    conversation = events[0][1]["conversation_id"]
    question = events[0][1]["user_message"]["id"]
    comparison = next(p for n, p in events if n == "pair")["comparison"]
    again = web.chat(conversation_id=conversation, parent_id=question)
    new = again[-1][1]["message"]["id"]
    _read_later(live)
    early = web.api("PUT", f"/messages/{new}/verdict", json={"verdict": "better"})
    assert early.status_code == 409 and early.json()["error"]["code"] == "vote_pending"
    voted = web.api("PUT", f"/comparisons/{comparison['id']}/vote", json={"winner": "b"}).json()
    for answer in (comparison["b_id"], comparison["a_id"]):
        refused = web.api("PUT", f"/messages/{answer}/verdict", json={"verdict": "worse"})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("side_by_side_answer", "message_id")
    email = web.api("GET", "/me").json()["email"]
    key = live.call(lambda s: s.accounts.create_key(email, "test")).secret
    b = completion_id(uuid.UUID(comparison["b_id"]))
    with httpx.Client(base_url=live.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        said = http.post("/api/feedback", json={"message_id": b, "verdict": "worse"})
    assert said.status_code == 400 and said.json()["error"]["code"] == "side_by_side_answer"
    # Voted: the regeneration is compared with the answer it replaced, named as it was voted on.
    judged = web.api("PUT", f"/messages/{new}/verdict", json={"verdict": "better"}).json()
    assert judged["kind"] == "regeneration" and judged["b_id"] == new
    side = "a" if judged["a_id"] == comparison["a_id"] else "b"
    assert judged["a_id"] == comparison[f"{side}_id"]
    assert judged["a_model"] == voted[f"{side}_model"]
    kinds = sorted(c["kind"] for c in web.tree(conversation)["comparisons"])
    assert kinds == ["regeneration", "side_by_side"]
    assert [c.status for c in _credits(live, web)] == ["granted", "granted"]


def test_a_correction_must_change_the_answer_and_earns_once(live: LiveServer) -> None:
    """A correction the same as the answer, or as an earlier correction of it, whitespace and
    punctuation aside, is refused; a second, different one is kept but earns nothing more."""
    web = _web(live)
    events = web.chat(content="What colour is the lamp of a lighthouse")
    conversation = events[0][1]["conversation_id"]
    original = events[-1][1]["message"]
    path = f"/messages/{original['id']}/correction"
    _read_later(live)
    fixed = "Mostly white, sometimes red or green."
    assert web.api("POST", path, json={"content": fixed}).status_code == 201
    for same in (fixed, f"  {fixed}\n", "Mostly white sometimes red or green", fixed + " ."):
        again = web.api("POST", path, json={"content": same})
        assert again.status_code == 409, (same, again.text)
        assert again.json()["error"]["code"] == "duplicate_correction"
    for trivial in (original["content"] + " .", original["content"].replace(" ", "\n  ")):
        refused = web.api("POST", path, json={"content": trivial})
        assert refused.status_code == 400, (trivial, refused.text)
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("correction_unchanged", "content")
    other = web.api("POST", path, json={"content": "White, or red and green in harbours."})
    assert other.status_code == 201
    made = [c for c in web.tree(conversation)["comparisons"] if c["kind"] == "correction"]
    assert len(made) == 2
    assert [(c.status, c.tokens) for c in _credits(live, web)] == [("granted", 100)]


def test_a_removed_rating_gives_its_credit_back(live: LiveServer) -> None:
    web = _web(live)
    answer = web.chat(content="Do lighthouses still have keepers")[-1][1]["message"]["id"]
    _read_later(live)
    path = f"/messages/{answer}/rating"
    assert web.api("PUT", path, json={"rating": 1}).status_code == 200
    assert web.api("GET", "/me").json()["credits"]["bonus_daily_tokens"] == 100
    assert web.api("DELETE", path).status_code == 204
    # Rating it again earns nothing: the answer's one credit was given and taken back.
    assert web.api("PUT", path, json={"rating": 1}).status_code == 200
    earned = web.api("GET", "/me").json()["credits"]
    assert (earned["bonus_daily_tokens"], earned["clawed_back"]) == (0, 1)
    judged = [(c.status, c.reason) for c in _credits(live, web)]
    assert judged == [("clawed_back", "rating_removed")]


def test_feedback_earns_only_while_it_may_be_trained_on(live: LiveServer) -> None:
    """No credit for feedback from a person whose chats are not trained on (by their choice or
    the organisation's default, here no); credits earned count only while consent stands."""
    for consent in (None, False):
        web = _web(live, consent=consent)
        answer = web.chat(content="Is a lightship a lighthouse")[-1][1]["message"]["id"]
        _read_later(live)
        assert web.api("PUT", f"/messages/{answer}/rating", json={"rating": 1}).is_success
        judged = [(c.status, c.reason) for c in _credits(live, web)]
        assert judged == [("refused", "no_training_consent")]
        assert web.api("GET", "/me").json()["credits"]["refused"] == {"no_training_consent": 1}
    web = _web(live)
    answer = web.chat(content="Why are lighthouses striped")[-1][1]["message"]["id"]
    _read_later(live)
    assert web.api("PUT", f"/messages/{answer}/rating", json={"rating": 1}).is_success
    assert web.api("GET", "/me").json()["credits"]["bonus_daily_tokens"] == 100
    web.api("PUT", "/me/consent", json={"use_for_training": False})
    assert web.api("GET", "/me").json()["credits"]["bonus_daily_tokens"] == 0
    web.api("PUT", "/me/consent", json={"use_for_training": True})
    assert web.api("GET", "/me").json()["credits"]["bonus_daily_tokens"] == 100


@pytest.mark.parametrize(
    ("answer", "question", "leaks"),
    [
        ("As Llama, I think so.", "Is the sea salty?", True),
        ("Llama is better at code than Mistral.", "Is llama better at code than mistral?", False),
        ("Llama is fine, but as ChatGPT I prefer mine.", "Is llama any good?", True),
        ("smollm2-135m-instruct here.", "Who are you?", True),  # a compared variant's name
        ("A llama-shaped lamp.", "", True),
    ],
)
def test_an_answer_leaks_identity_only_with_a_model_name_the_question_did_not_give(
    answer: str, question: str, leaks: bool
) -> None:
    variants = ("smollm2-135m-instruct@t=1", "smollm2-135m-instruct@t=0.3")
    assert leaks_identity(answer, variants, question) is leaks
