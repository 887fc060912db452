"""Exports end to end: data made through the real web chat and API, exported with the CLI,
loaded with `datasets.load_dataset` as their users will; consent, deletion, cleaning, rater trust
and determinism checked on the files themselves."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datasets
import openai
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from lamplighter.accounts import AccountService
from lamplighter.cli import app
from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.flywheel.credits import Credits
from lamplighter.flywheel.export import SCHEMAS, Exporter, count_messages
from lamplighter.flywheel.policy import CreditPolicy
from lamplighter.settings import Settings
from lamplighter.store.database import Database
from lamplighter.store.models import Credit, User
from tests.conftest import FAILING, ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.test_tools import ASK, SUNNY, TOOL_MODEL, WEATHER, _answer
from tests.upstream_server import recording
from tests.web.conftest import Browserless, new_person

QUESTION = "Tell me about the lighthouse keepers of Maine"
REGENERATED = "What did lighthouse keepers eat during the long winter months"
CORRECTED = "Explain how a Fresnel lens concentrates the light of a lamp"
CORRECTION = "A Fresnel lens bends light with concentric prisms into one strong beam."
FAILED = "How did keepers warn passing ships during heavy fog"
SHARED = [
    "Why are so many lighthouses painted with stripes",
    "How far out to sea can a lighthouse beam be seen",
    "Who was the first woman to keep a lighthouse in America",
    "What happened to lighthouse keepers when the lights were automated",
]
MALLORY = "Mallory wonders whether foghorns frighten the seals of Nantucket"
TERSE_MODEL = "scripted-terse"
TERSE = "Keepers trimmed the wicks at dusk."
LEAKED = "Would you keep the lighthouse lamp burning all night long"
# The terse model's answer to it names a model nobody asked about: its vote does not count.
LEAKING = "As chatgpt, I would keep it burning."
# Distinct prompts for side-by-side votes: no two share more than an opener or a subject, so
# none is a near duplicate of another.
OPENERS = ["Tell me a story about", "Give three surprising facts about", "Why do historians study"]
SUBJECTS = [
    "the old tower on Pemaquid Point in Maine",
    "foghorns along the rocky Scottish coast",
    "tidal charts kept for Portland harbour",
    "shipwrecks off Cape Hatteras in winter storms",
    "storm petrels nesting on the western sea cliffs",
    "whale oil lamps and the smell they left",
    "lifesaving stations on the beaches of Cape Cod",
    "the rebuilt Eddystone towers near Plymouth",
    "ice storms on Lake Superior in November",
    "supply ships that brought coal to remote islands",
]
# The audit store: what a client may send, and conversations that went wrong part-way.
ASKED_FIRST = "Which lighthouse in Scotland is the oldest one still standing"
MADE_UP = "The Bell Rock lighthouse was built of glass by Napoleon in 1750"
ASKED_AFTER = "And who designed the tallest lighthouse in Scotland"
TRUNCATED = "Describe the daily routine of a lighthouse keeper in winter"
JUDGED_WORSE = "What fuel did the first lighthouses of New England burn"
# Preferences that say nothing: between one answer and its copy, and both ways.
SAME_TWICE = "What colour was the light of the Boston harbour lighthouse"
BOTH_WAYS = "Did keepers prefer living on islands or on the mainland"
# The same follow-up in different conversations.
HOOK_HEAD = "Tell me about the Hook Head lighthouse in Ireland"
CORDOUAN = "Tell me about the Cordouan lighthouse on the Gironde"
MORE = "Can you tell me more about that"
# Conversations that went on after an answer that went wrong, and one that went well.
ERRED = "How did keepers signal to each other across the bay at night"
AFTER_ERROR = "Please answer that question about signals once more"
KRAKEN = "Tell me the legend of the kraken that sank lighthouse tenders"
AFTER_KRAKEN = "Which sailors first reported seeing it off Norway"
DOWNVOTED = "How tall is the lighthouse at Cape Hatteras in North Carolina"
AFTER_DOWNVOTE = "And how far inland was it moved in the end"
HEALTHY = "Why were lighthouse lenses made in France in the nineteenth century"
AFTER_HEALTHY = "Which workshop in Paris made the most of them"
STRUCTURED = "List the lighthouses of Brittany as JSON records"
LIGHTHOUSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "Lighthouse",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "strict": False,
    },
}
AUDIT_CONFIG = """
[moderation]
action = "tag"

[[moderation.rules]]
category = "sea-monsters"
words = ["kraken"]
"""
SIDE_BY_SIDE_CONFIG = f"""
[flywheel]
side_by_side_rate = 1.0
side_by_side_variants = ["{SCRIPTED}", "{TERSE_MODEL}"]
"""


class Store:
    """What the fixture made, for the tests to look for."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ids: dict[str, str] = {}
        self.started = datetime.now(UTC)
        self.voted: dict[str, list[str]] = {}  # voter -> their side-by-side questions
        self.emails: dict[str, str] = {}  # voter -> their email
        self.rated_late = self.started  # after every answer rated late was written


def _web(server: LiveServer, *, consent: bool | None) -> Browserless:
    web = Browserless(server.base_url)
    web.login(new_person(server, plan="roomy"))
    if consent is not None:
        web.api("PUT", "/me/consent", json={"use_for_training": consent})
    return web


def _done(events: list[tuple[str, Any]]) -> dict[str, Any]:
    """The answer a plain (not side-by-side) chat finished with."""
    message: dict[str, Any] = next(p for name, p in events if name == "done")["message"]
    return message


def _ask_and_rate(web: Browserless, question: str, rating: int) -> None:
    answer = _done(web.chat(content=question, model=SCRIPTED))
    assert web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": rating}).is_success


def _side_by_side(web: Browserless, question: str, pick: str) -> str:
    """Ask a question answered side by side and vote: ``pick`` is "echo" or "terse" (the side
    whose answer that is), or a winner as such ("tie", "both_bad"). Returns the conversation."""
    events = web.chat(content=question)
    comparison = next(p for name, p in events if name == "pair")["comparison"]
    slots = {p["slot"]: p["message"]["content"] for name, p in events if name == "done"}
    echo = next(slot for slot, content in slots.items() if content.startswith("You said:"))
    winner = {"echo": echo, "terse": "b" if echo == "a" else "a"}.get(pick, pick)
    voted = web.api("PUT", f"/comparisons/{comparison['id']}/vote", json={"winner": winner})
    assert voted.is_success, voted.text
    conversation: str = events[0][1]["conversation_id"]
    return conversation


def _make_answers_and_ratings(server: LiveServer, made: Store) -> None:
    """Ratings, a regeneration verdict, a correction; consent, deletion; raters to trust."""
    ada = _web(server, consent=True)
    first = ada.chat(content=QUESTION, model=SCRIPTED)
    conversation, question = first[0][1]["conversation_id"], first[0][1]["user_message"]["id"]
    good = _done(first)["id"]
    # Regenerated by another model: a pair of two answers the same would teach nothing.
    regenerated = ada.chat(conversation_id=conversation, parent_id=question, model=TERSE_MODEL)
    bad = _done(regenerated)["id"]
    ada.api("PUT", f"/messages/{good}/rating", json={"rating": 1})
    ada.api("PUT", f"/messages/{bad}/rating", json={"rating": -1, "reasons": ["too_long"]})
    made.ids.update(good=good, bad=bad, conversation=conversation)
    ada.chat(
        content="My email is ada.lovelace@example.org and my card is 4111 1111 1111 1111",
        model=SCRIPTED,
    )
    ada.chat(content="  tell me about the LIGHTHOUSE keepers of maine ", model=SCRIPTED)
    ada.chat(content="hi", model=SCRIPTED)  # a one-word exchange

    # A regeneration judged better than the answer before it, then another judged the same.
    old = ada.chat(content=REGENERATED, model=SCRIPTED)
    conversation, question = old[0][1]["conversation_id"], old[0][1]["user_message"]["id"]
    new = _done(ada.chat(conversation_id=conversation, parent_id=question, model=TERSE_MODEL))
    assert ada.api("PUT", f"/messages/{new['id']}/verdict", json={"verdict": "better"}).is_success
    same = _done(ada.chat(conversation_id=conversation, parent_id=question, model=SCRIPTED))
    assert ada.api("PUT", f"/messages/{same['id']}/verdict", json={"verdict": "same"}).is_success
    assert ada.api("PUT", f"/messages/{same['id']}/rating", json={"rating": 1}).is_success
    made.ids.update(
        regenerated_old=_done(old)["id"], regenerated_new=new["id"], regenerated_same=same["id"]
    )

    # A regeneration that failed: "better" on it does not count.
    asked = ada.chat(content=FAILED, model=SCRIPTED)
    conversation, question = asked[0][1]["conversation_id"], asked[0][1]["user_message"]["id"]
    failed = ada.chat(conversation_id=conversation, parent_id=question, model=FAILING)
    failed_id = failed[0][1]["message"]["id"]
    verdict = ada.api("PUT", f"/messages/{failed_id}/verdict", json={"verdict": "better"})
    assert verdict.json()["discarded"] == "answer_cut_or_failed"

    # A correction: the person's rewrite is preferred to the original.
    original = _done(ada.chat(content=CORRECTED, model=SCRIPTED))
    corrected = ada.api(
        "POST", f"/messages/{original['id']}/correction", json={"content": CORRECTION}
    )
    assert corrected.status_code == 201, corrected.text
    made.ids.update(original=original["id"], correction=corrected.json()["message"]["id"])
    # Later, Ada rates an answer she had not rated and changes her mind about another: the
    # two make a pair.
    made.rated_late = datetime.now(UTC)
    for answer, rating in (("regenerated_new", 1), ("regenerated_same", -1)):
        rated = ada.api("PUT", f"/messages/{made.ids[answer]}/rating", json={"rating": rating})
        assert rated.is_success, rated.text
    ada.close()

    bob = _web(server, consent=None)  # the organisation's default: no
    asked = bob.chat(content="Bob's private thoughts on the merger", model=SCRIPTED)
    conversation, question = asked[0][1]["conversation_id"], asked[0][1]["user_message"]["id"]
    again = _done(bob.chat(conversation_id=conversation, parent_id=question, model=SCRIPTED))
    bob.api("PUT", f"/messages/{again['id']}/verdict", json={"verdict": "better"})
    bob.close()

    cleo = _web(server, consent=True)
    gone = cleo.chat(content="Cleo's conversation that she deletes", model=SCRIPTED)
    made.ids["deleted"] = gone[0][1]["conversation_id"]
    cleo.api("DELETE", f"/conversations/{made.ids['deleted']}")
    cleo.chat(content="Cleo changes her mind about training", model=SCRIPTED)
    cleo.api("PUT", "/me/consent", json={"use_for_training": False})
    cleo.close()

    # Shared answers (the scripted model answers one question one way): three raters like
    # them, Mallory, first to ask, rates every one down. Four shared items each, so that the
    # honest raters (one network, as every test client) are not taken for sock puppets.
    mallory = _web(server, consent=True)
    for question in SHARED:
        _ask_and_rate(mallory, question, -1)
    mallory.chat(content=MALLORY, model=SCRIPTED)
    mallory.close()
    for _ in range(3):
        honest = _web(server, consent=True)
        for question in SHARED:
            _ask_and_rate(honest, question, 1)
        honest.close()


def _make_votes(server: LiveServer, made: Store) -> None:
    """Side-by-side votes: two honest voters prefer the echo, Vic always the other one."""
    questions = iter(f"{o} {s}" for s, o in itertools.product(SUBJECTS, OPENERS))
    honest = {"v1": [*(["echo"] * 6), "tie"], "v2": [*(["echo"] * 6), "both_bad"]}
    for voter, picks in honest.items():
        web = _web(server, consent=True)
        made.emails[voter] = web.api("GET", "/me").json()["email"]
        made.voted[voter] = []
        for pick in picks:
            made.voted[voter].append(next(questions))
            _side_by_side(web, made.voted[voter][-1], pick)
        if voter == "v1":
            _side_by_side(web, LEAKED, "echo")  # an answer names a model: does not count
        web.close()
    vic = _web(server, consent=True)
    made.emails["vic"] = vic.api("GET", "/me").json()["email"]
    made.voted["vic"] = [next(questions) for _ in range(10)]
    for question in made.voted["vic"]:
        _side_by_side(vic, question, "terse")
    vic.close()

    dora = _web(server, consent=True)  # votes, then withdraws consent
    made.voted["dora"] = ["Dora asks how lighthouse keepers spent their Christmas evenings"]
    _side_by_side(dora, made.voted["dora"][0], "echo")
    dora.api("PUT", "/me/consent", json={"use_for_training": False})
    dora.close()
    eve = _web(server, consent=True)  # votes, then deletes the conversation
    made.voted["eve"] = ["Eve asks which lighthouse keepers kept the best diaries"]
    gone = _side_by_side(eve, made.voted["eve"][0], "echo")
    assert eve.api("DELETE", f"/conversations/{gone}").status_code == 204
    eve.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    async def backends(_: Settings) -> list[Backend]:
        return [
            ScriptedBackend(SCRIPTED),
            ScriptedBackend(FAILING, fail_after=3),
            ScriptedBackend(TERSE_MODEL, reply=lambda _: TERSE),
        ]

    async def two_models(_: Settings) -> list[Backend]:
        def terse(turns: tuple[Turn, ...]) -> str:
            return LEAKING if turns[-1].content == LEAKED else TERSE

        return [ScriptedBackend(SCRIPTED), ScriptedBackend(TERSE_MODEL, reply=terse)]

    data_dir = tmp_path_factory.mktemp("flywheel")
    plain, side_by_side = data_dir / "plain.toml", data_dir / "side_by_side.toml"
    plain.write_text(ROOMY_PLAN)
    side_by_side.write_text(ROOMY_PLAN + SIDE_BY_SIDE_CONFIG)
    made = Store(data_dir)
    # Two servers in turn on one store: the second answers every new question side by side.
    with LiveServer(make_settings(data_dir, config=plain, embedded_engine=False), backends) as s:
        _make_answers_and_ratings(s, made)
    settings = make_settings(data_dir, config=side_by_side, embedded_engine=False)
    with LiveServer(settings, two_models) as server:
        _make_votes(server, made)
    yield made


def _person(server: LiveServer) -> tuple[Browserless, openai.OpenAI]:
    """Someone who consents, in the web chat and with an API key."""
    person = new_person(server, plan="roomy")
    web = Browserless(server.base_url)
    web.login(person)
    assert web.api("PUT", "/me/consent", json={"use_for_training": True}).is_success
    key = server.call(lambda s: s.accounts.create_key(person.email, "test")).secret
    return web, server.client(key)


def _messages(web: Browserless) -> dict[str, dict[str, Any]]:
    """Every message of the person's conversations, by its text."""
    conversations = web.api("GET", "/conversations").json()["data"]
    return {
        message["content"]: message
        for conversation in conversations
        for message in web.tree(conversation["id"])["messages"]
    }


def _client_written(server: LiveServer) -> None:
    """An API client sends an assistant turn of its own making; the person rates it up and
    prefers it to the answer the service gave when regenerating."""
    web, client = _person(server)
    client.chat.completions.create(
        model=SCRIPTED,
        messages=[
            {"role": "user", "content": ASKED_FIRST},
            {"role": "assistant", "content": MADE_UP},
            {"role": "user", "content": ASKED_AFTER},
        ],
    )
    stored = _messages(web)
    made_up, question = stored[MADE_UP], stored[ASKED_FIRST]
    assert made_up["model"] is None and made_up["status"] == "complete"
    after = stored[f"You said: {ASKED_AFTER}"]
    for answer in (made_up, after):
        rated = web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": 1})
        assert rated.is_success, rated.text
    conversation = web.api("GET", "/conversations").json()["data"][0]["id"]
    again = _done(web.chat(conversation_id=conversation, parent_id=question["id"]))
    verdict = web.api("PUT", f"/messages/{again['id']}/verdict", json={"verdict": "worse"})
    assert verdict.is_success and verdict.json()["discarded"] is None, verdict.text
    web.close()


def _structured(server: LiveServer) -> None:
    """An API answer generated under a JSON schema, rated up; then a regeneration in the web
    chat (under no format) that the person judges worse."""
    web, client = _person(server)
    client.chat.completions.create(
        model=SCRIPTED,
        messages=[{"role": "user", "content": STRUCTURED}],
        response_format=LIGHTHOUSE_FORMAT,  # type: ignore[arg-type]
    )
    stored = _messages(web)
    answer, question = stored[f"You said: {STRUCTURED}"], stored[STRUCTURED]
    assert web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": 1}).is_success
    conversation = web.api("GET", "/conversations").json()["data"][0]["id"]
    again = _done(web.chat(conversation_id=conversation, parent_id=question["id"]))
    verdict = web.api("PUT", f"/messages/{again['id']}/verdict", json={"verdict": "worse"})
    assert verdict.is_success, verdict.text
    web.close()


def _tool_use(server: LiveServer) -> None:
    """An API client's tool round trip (a call, its result, the answer from it), both answers
    rated up; then the call regenerated in the web chat, which offers no tools, and judged
    worse than the call."""
    web, client = _person(server)
    first = client.chat.completions.create(
        model=TOOL_MODEL,
        messages=[ASK],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    call = first.choices[0].message
    result = {"role": "tool", "tool_call_id": "call_7", "content": "clear"}
    client.chat.completions.create(
        model=TOOL_MODEL,
        messages=[ASK, call.model_dump(), result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    stored = _messages(web)
    for text in ("", SUNNY):
        rated = web.api("PUT", f"/messages/{stored[text]['id']}/rating", json={"rating": 1})
        assert rated.is_success, rated.text
    question = stored[ASK["content"]]
    conversation = web.api("GET", "/conversations").json()["data"][0]["id"]
    again = _done(web.chat(conversation_id=conversation, parent_id=question["id"]))
    verdict = web.api("PUT", f"/messages/{again['id']}/verdict", json={"verdict": "worse"})
    assert verdict.is_success, verdict.text
    web.close()


def _judged_worse(server: LiveServer) -> None:
    """An answer stopped at the length limit, and one judged worse than its regeneration."""
    web, client = _person(server)
    cut_short = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": TRUNCATED}], max_tokens=3
    )
    assert cut_short.choices[0].finish_reason == "length"
    first = web.chat(content=JUDGED_WORSE)
    conversation, question = first[0][1]["conversation_id"], first[0][1]["user_message"]["id"]
    again = _done(web.chat(conversation_id=conversation, parent_id=question, model=TERSE_MODEL))
    verdict = web.api("PUT", f"/messages/{again['id']}/verdict", json={"verdict": "better"})
    assert verdict.is_success and verdict.json()["discarded"] is None, verdict.text
    web.close()


def _went_on(server: LiveServer) -> None:
    """Follow-ups after an answer that failed, one flagged by moderation, one rated down, and
    one that was fine; each follow-up's answer rated up, two of them regenerated and judged."""
    web, _ = _person(server)

    def follow(first: list[tuple[str, Any]], content: str) -> tuple[str, dict[str, Any]]:
        conversation, answer = first[0][1]["conversation_id"], first[0][1]["message"]["id"]
        events = web.chat(conversation_id=conversation, parent_id=answer, content=content)
        after = _done(events)
        assert web.api("PUT", f"/messages/{after['id']}/rating", json={"rating": 1}).is_success
        return events[0][1]["user_message"]["id"], after

    def regenerate(first: list[tuple[str, Any]], question: str) -> None:
        conversation = first[0][1]["conversation_id"]
        again = web.chat(conversation_id=conversation, parent_id=question, model=TERSE_MODEL)
        verdict = web.api(
            "PUT", f"/messages/{_done(again)['id']}/verdict", json={"verdict": "better"}
        )
        assert verdict.is_success and verdict.json()["discarded"] is None, verdict.text

    failed = web.chat(content=ERRED, model=FAILING)
    assert [name for name, _ in failed][-1] == "error"
    follow(failed, AFTER_ERROR)
    flagged = web.chat(content=KRAKEN)  # tagged by moderation, nothing shown
    question, _ = follow(flagged, AFTER_KRAKEN)
    regenerate(flagged, question)
    downvoted = web.chat(content=DOWNVOTED)
    assert web.api(
        "PUT", f"/messages/{_done(downvoted)['id']}/rating", json={"rating": -1}
    ).is_success
    follow(downvoted, AFTER_DOWNVOTE)
    healthy = web.chat(content=HEALTHY)
    question, _ = follow(healthy, AFTER_HEALTHY)
    regenerate(healthy, question)
    web.close()


def _disagreeing(server: LiveServer) -> None:
    """A regeneration word for word the same as the answer before it, judged better; a
    regeneration judged worse, whose two answers the person then rates the other way."""
    web, _ = _person(server)

    def regenerate(first: list[tuple[str, Any]], model: str, verdict: str) -> dict[str, Any]:
        conversation, question = first[0][1]["conversation_id"], first[0][1]["user_message"]["id"]
        again = _done(web.chat(conversation_id=conversation, parent_id=question, model=model))
        said = web.api("PUT", f"/messages/{again['id']}/verdict", json={"verdict": verdict})
        assert said.is_success and said.json()["discarded"] is None, said.text
        return again

    first = web.chat(content=SAME_TWICE)
    assert regenerate(first, SCRIPTED, "better")["content"] == _done(first)["content"]
    first = web.chat(content=BOTH_WAYS)
    again = regenerate(first, TERSE_MODEL, "worse")
    for answer, rating in ((_done(first), -1), (again, 1)):
        rated = web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": rating})
        assert rated.is_success, rated.text
    web.close()


def _followed_up(server: LiveServer) -> None:
    """Two conversations about different lighthouses with the same follow-up, and a third that
    repeats the first word for word."""
    web, _ = _person(server)
    for question in (HOOK_HEAD, CORDOUAN, HOOK_HEAD):
        first = web.chat(content=question)
        conversation, answer = first[0][1]["conversation_id"], _done(first)["id"]
        _done(web.chat(conversation_id=conversation, parent_id=answer, content=MORE))
    web.close()


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store of what the export must not learn from, each case beside a good one."""

    data_dir = tmp_path_factory.mktemp("audit")
    config = data_dir / "audit.toml"
    config.write_text(ROOMY_PLAN + AUDIT_CONFIG)
    made = Store(data_dir)
    with recording(_answer) as (url, _):
        tools = UpstreamConfig("tools", url, (TOOL_MODEL,), capacity=2)

        async def backends(_: Settings) -> list[Backend]:
            return [
                ScriptedBackend(SCRIPTED),
                ScriptedBackend(FAILING, fail_after=3),
                ScriptedBackend(TERSE_MODEL, reply=lambda _: TERSE),
                UpstreamBackend(tools),
            ]

        settings = make_settings(data_dir, config=config, embedded_engine=False)
        with LiveServer(settings, backends) as s:
            _client_written(s)
            _judged_worse(s)
            _went_on(s)
            _disagreeing(s)
            _followed_up(s)
            _structured(s)
            _tool_use(s)
            s.close_clients()
    yield made


def _invoke(store: Store, kind: str, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        app,
        ["export", kind, "--out", str(out), *extra],
        env={"LAMPLIGHTER_DATA_DIR": str(store.data_dir)},
    )


def _export(store: Store, kind: str, out: Path, *extra: str) -> dict[str, Any]:
    result = _invoke(store, kind, out, *extra)
    assert result.exit_code == 0, result.output
    parquet = "parquet" in extra
    data = out / f"{kind}.{'parquet' if parquet else 'jsonl'}"
    return {
        "rows": [] if parquet else [json.loads(line) for line in data.read_text().splitlines()],
        "index": [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()],
        "card": (out / "README.md").read_text(),
        "raw": data.read_bytes(),
    }


def _load(out: Path, kind: str, format: str = "json") -> datasets.Dataset:
    extension = "jsonl" if format == "json" else format
    loaded = datasets.load_dataset(
        format, data_files=str(out / f"{kind}.{extension}"), split="train"
    )
    assert isinstance(loaded, datasets.Dataset)
    return loaded


def _as_parquet(row: dict[str, Any]) -> dict[str, Any]:
    """A JSON-lines row of an answer with no format or tools, as Parquet holds it."""
    turns = {"tool_calls": None, "tool_call_id": None}
    return {
        key: [turn | turns for turn in value] if isinstance(value, list) else value
        for key, value in row.items()
    } | {"response_format": None, "tools": None}


def _texts(rows: list[dict[str, Any]]) -> list[str]:
    return [
        turn["content"]
        for row in rows
        for value in row.values()
        if isinstance(value, list)
        for turn in value
        if "role" in turn  # a message (not a tool's definition)
    ]


def _answers(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The answers of SFT rows, by the first message of their conversation."""
    answers: dict[str, list[str]] = {}
    for row in rows:
        first, last = row["messages"][0]["content"], row["messages"][-1]["content"]
        answers.setdefault(first, []).append(last)
    return answers


def test_sft_has_exactly_the_trl_fields_and_only_consenting_clean_rows(
    store: Store, tmp_path: Path
) -> None:
    export = _export(store, "sft", tmp_path)
    loaded = _load(tmp_path, "sft")
    assert loaded.column_names == ["messages"]
    texts = _texts(export["rows"])
    assert any(t == QUESTION for t in texts)
    assert not any("Bob" in t or "Cleo" in t for t in texts)  # no consent (now)
    assert not any("ada.lovelace@example.org" in t or "4111" in t for t in texts)
    assert any("[EMAIL]" in t and "[CARD]" in t for t in texts)
    # Of the rated regeneration only the answer rated up; the near-duplicate and "hi" are out.
    ids = {line["message_id"] for line in export["index"]}
    assert store.ids["good"] in ids and store.ids["bad"] not in ids
    # A correction is an answer to learn from; the answer it replaced is not.
    assert store.ids["correction"] in ids and store.ids["original"] not in ids
    assert CORRECTION in texts
    card = export["card"]
    for reason in (
        "rated_down",
        "corrected",
        "voted_both_bad",
        "error_answer",
        "one_word_exchange",
        "no_consent (conversations)",
    ):
        assert f"| {reason} |" in card
    assert "near_duplicate_prompt" in card or "duplicate_prompt" in card
    assert "| EMAIL | " in card and "SHA-256" in card


def test_kto_and_dpo_come_from_the_rated_regeneration(store: Store, tmp_path: Path) -> None:
    kto = _export(store, "kto", tmp_path / "kto")
    assert _load(tmp_path / "kto", "kto").column_names == ["prompt", "completion", "label"]
    ada = [
        row
        for row, line in zip(kto["rows"], kto["index"], strict=True)
        if line["conversation_id"] == store.ids["conversation"]
    ]
    assert sorted(row["label"] for row in ada) == [False, True]
    assert ada[0]["prompt"] == [{"role": "user", "content": QUESTION}]
    dpo = _export(store, "dpo", tmp_path / "dpo")
    assert {
        "conversation_id": store.ids["conversation"],
        "user_id": dpo["index"][0]["user_id"],
        "chosen_id": store.ids["good"],
        "rejected_id": store.ids["bad"],
        "source": "rating",
        "comparison_id": None,
    } in dpo["index"]


def test_dpo_pairs_come_from_every_source_with_exactly_the_trl_fields(
    store: Store, tmp_path: Path
) -> None:
    export = _export(store, "dpo", tmp_path)
    loaded = _load(tmp_path, "dpo")
    assert loaded.column_names == ["prompt", "chosen", "rejected"]
    sources = [line["source"] for line in export["index"]]
    # Honest side-by-side votes for A or B: 6 + 6; Vic's are a suspicious voter's. The
    # regeneration judged better is, word for word, the row its ratings make: the answer rated
    # down is the same text as the one it replaced. One row of the two.
    assert sorted(set(sources)) == ["correction", "rating", "side_by_side"]
    assert sources.count("side_by_side") == 12 and len(sources) == 15
    pairs = {line["source"]: (row, line) for row, line in zip(loaded, export["index"], strict=True)}
    row, line = pairs["correction"]
    assert row["chosen"] == [{"role": "assistant", "content": CORRECTION}]
    assert row["rejected"] == [{"role": "assistant", "content": f"You said: {CORRECTED}"}]
    assert row["prompt"] == [{"role": "user", "content": CORRECTED}]
    rated = [line for line in export["index"] if line["source"] == "rating"]
    assert (store.ids["regenerated_new"], store.ids["regenerated_same"]) in [
        (line["chosen_id"], line["rejected_id"]) for line in rated
    ]
    for row, line in zip(loaded, export["index"], strict=True):
        if line["source"] == "side_by_side":  # the honest voters preferred the echo
            assert row["chosen"][0]["content"].startswith("You said:")
    texts = _texts(export["rows"])
    assert not any(question in texts for question in store.voted["vic"])
    assert not any(t in (LEAKED, FAILED) or "Dora" in t or "Eve " in t for t in texts)
    assert not any("Bob" in t for t in texts)
    card = export["card"]
    for reason in (
        "suspicious_voter",
        "discarded_vote (identity_leaked)",
        "discarded_vote (answer_cut_or_failed)",
        "tie_vote (no pair)",
        "both_bad_vote (no pair)",
    ):
        assert f"| {reason} |" in card
    assert "| duplicate_row | 1 |" in card
    for source, count in (("rating", 2), ("regeneration", 0), ("correction", 1)):
        assert f"| {source} | {count} |" in card
    assert "| side_by_side | 12 |" in card


def test_parquet_loads_with_the_same_rows_and_the_same_bytes_twice(
    store: Store, tmp_path: Path
) -> None:
    jsonl = _export(store, "dpo", tmp_path / "jsonl")
    one = _export(store, "dpo", tmp_path / "one", "--format", "parquet")
    two = _export(store, "dpo", tmp_path / "two", "--format", "parquet")
    assert one["raw"] == two["raw"] and one["card"] == two["card"]
    assert hashlib.sha256(one["raw"]).hexdigest() in one["card"]
    assert "Parquet" in one["card"]
    loaded = _load(tmp_path / "one", "dpo", "parquet")
    assert loaded.column_names == ["prompt", "chosen", "rejected", "response_format", "tools"]
    # No answer here had a format or tools: those columns, and the messages' tool fields, are
    # null.
    assert loaded.to_list() == [_as_parquet(row) for row in jsonl["rows"]]
    assert one["index"] == jsonl["index"]
    votes = _export(store, "votes", tmp_path / "votes", "--format", "parquet")
    assert len(_load(tmp_path / "votes", "votes", "parquet")) == len(votes["index"]) == 14


def test_an_empty_parquet_export_keeps_its_schema(store: Store, tmp_path: Path) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for kind in ("kto", "votes"):
        export = _export(store, kind, tmp_path / kind, "--format", "parquet", "--since", future)
        assert export["index"] == []
        assert pq.read_schema(tmp_path / kind / f"{kind}.parquet").equals(SCHEMAS[kind])


def test_votes_are_arena_rows_without_discarded_or_suspicious_ones(
    store: Store, tmp_path: Path
) -> None:
    export = _export(store, "votes", tmp_path)
    loaded = _load(tmp_path, "votes")
    assert loaded.column_names == [
        "prompt",
        "model_a",
        "model_b",
        "answer_a",
        "answer_b",
        "winner",
        "judge",
        "tstamp",
    ]
    rows = export["rows"]
    # Each voter under one pseudonym, the same in every export; never their account's id.
    judges = {row["prompt"][-1]["content"]: row["judge"] for row in rows}
    for voter in ("v1", "v2"):
        assert len({judges[prompt] for prompt in store.voted[voter]}) == 1
    assert judges[store.voted["v1"][0]] != judges[store.voted["v2"][0]]
    assert all(row["judge"].startswith("judge_") and row["tstamp"] > 1.7e9 for row in rows)
    accounts = {line["user_id"] for line in export["index"]}
    assert not any(uuid.UUID(a).hex[:16] in row["judge"] for a in accounts for row in rows)
    assert [row["judge"] for row in _export(store, "votes", tmp_path / "again")["rows"]] == [
        row["judge"] for row in rows
    ]
    prompts = [row["prompt"][-1]["content"] for row in rows]
    assert sorted(prompts) == sorted(store.voted["v1"] + store.voted["v2"])
    for row in rows:
        assert row["prompt"][-1]["role"] == "user"
        assert {row["model_a"], row["model_b"]} == {SCRIPTED, TERSE_MODEL}
        echo = "model_a" if row["answer_a"][0]["content"].startswith("You said:") else "model_b"
        assert row["winner"] in (echo, "tie", "tie (bothbad)")
        assert row["answer_a"][0]["role"] == row["answer_b"][0]["role"] == "assistant"
    assert sorted(row["winner"] for row in rows).count("tie (bothbad)") == 1
    assert [row["winner"] for row in rows].count("tie") == 1
    # Not the vote on answers that named a model, not the voter against the consensus, not
    # the person who withdrew consent nor the conversation deleted.
    assert LEAKED not in prompts
    assert not set(prompts) & set(store.voted["vic"] + store.voted["dora"] + store.voted["eve"])
    card = export["card"]
    assert "| suspicious_voter | 10 |" in card
    assert "| discarded_vote (identity_leaked) | 1 |" in card
    assert "as Chatbot Arena screens voters): 1; their votes are left out" in card
    assert set(export["index"][0]) == {
        "conversation_id",
        "user_id",
        "comparison_id",
        "a_id",
        "b_id",
    }


def test_min_trust_drops_the_rows_of_a_rater_against_the_consensus(
    store: Store, tmp_path: Path
) -> None:
    kto = _export(store, "kto", tmp_path / "all")
    labels = {row["prompt"][-1]["content"]: row["label"] for row in kto["rows"]}
    assert all(labels[question] is False for question in SHARED)  # Mallory asked first
    trusted = _export(store, "kto", tmp_path / "trusted", "--min-trust", "0.5")
    labels = {row["prompt"][-1]["content"]: row["label"] for row in trusted["rows"]}
    assert all(labels[question] is True for question in SHARED)  # the next rater's
    # Mallory's five conversations, and Vic's ten (he voted against everyone: see below).
    assert "| low_trust (conversations) | 15 |" in trusted["card"]
    assert "Minimum rater trust: 0.5" in trusted["card"]
    assert "low_trust" not in kto["card"]
    # Rows with no rating in them go too: everything of the person not trusted.
    sft = _export(store, "sft", tmp_path / "sft", "--min-trust", "0.5")
    assert MALLORY not in _texts(sft["rows"])
    assert MALLORY in _texts(_export(store, "sft", tmp_path / "sft-all")["rows"])
    # Vic voted against everyone ten times: each vote is evidence, and his trust is below 0.5
    # too, so his conversations go before the voter check sees his votes.
    votes = _export(store, "votes", tmp_path / "votes", "--min-trust", "0.5")
    assert "| low_trust (conversations) | 15 |" in votes["card"]  # Mallory's 5, Vic's 10
    assert "| suspicious_voter |" not in votes["card"]
    assert sorted(row["prompt"][-1]["content"] for row in votes["rows"]) == sorted(
        store.voted["v1"] + store.voted["v2"]
    )


async def _grant_votes(store: Store) -> None:
    """Grant each vote its credit, as if given after reading the answers (not at once)."""
    db = Database(f"sqlite+aiosqlite:///{store.data_dir / 'lamplighter.db'}")
    try:
        async with db.transaction() as session:
            voters = select(User.id).where(User.email.in_(store.emails.values()))
            granted = await session.execute(
                update(Credit)
                .where(Credit.user_id.in_(voters), Credit.signal == "comparison")
                .values(status="granted", reason=None, tokens=500)
            )
            # Vic's 10 votes, 7 each of the honest (v1's on an answer naming its model earned none).
            assert granted.rowcount == 10 + 7 + 7  # type: ignore[attr-defined]
    finally:
        await db.close()


async def _trust_and_credits(store: Store) -> dict[str, tuple[float, int, list[str]]]:
    """Each voter's trust, evidence and credit statuses."""
    db = Database(f"sqlite+aiosqlite:///{store.data_dir / 'lamplighter.db'}")
    try:
        trust, _ = await Credits(db, CreditPolicy()).estimate()
        found: dict[str, tuple[float, int, list[str]]] = {}
        async with db.transaction() as session:
            for voter, email in store.emails.items():
                user_id = await session.scalar(select(User.id).where(User.email == email))
                statuses = await session.scalars(
                    select(Credit.status).where(Credit.user_id == user_id).distinct()
                )
                key = str(user_id)
                found[voter] = (trust.raters[key], trust.evidence[key], sorted(statuses.all()))
        return found
    finally:
        await db.close()


def test_a_voter_against_everyone_loses_trust_and_credits(store: Store) -> None:
    """Vic voted against the other voters' choice on every one of his ten questions: each vote
    is checked against theirs, so his trust falls below the threshold and the review claws his
    credits back; the honest voters keep theirs."""
    asyncio.run(_grant_votes(store))
    reviewed = CliRunner().invoke(
        app, ["credits", "review"], env={"LAMPLIGHTER_DATA_DIR": str(store.data_dir)}
    )
    assert reviewed.exit_code == 0, reviewed.output
    found = asyncio.run(_trust_and_credits(store))
    trust, evidence, statuses = found["vic"]
    assert trust < 0.35 and evidence == 10
    assert statuses == ["clawed_back"]
    for voter in ("v1", "v2"):
        trust, evidence, statuses = found[voter]
        assert trust > 0.75 and evidence == 6
        assert statuses == ["granted"]
    assert "1 below the trust threshold" in reviewed.output
    assert "credits clawed back: 10 for low_trust" in reviewed.output


async def test_the_progress_bar_reaches_every_message_read(store: Store, tmp_path: Path) -> None:
    """Conversations left out (no consent, low trust) are read too: the bar counts them."""
    db = Database(f"sqlite+aiosqlite:///{store.data_dir / 'lamplighter.db'}")
    try:
        read: list[int] = []
        exporter = Exporter(db, consent_default=False)
        report = await exporter.run("sft", tmp_path, min_trust=0.5, progress=read.append)
        assert report.removed["no_consent (conversations)"] > 0
        assert report.removed["low_trust (conversations)"] > 0
        assert sum(read) == await count_messages(db)
    finally:
        await db.close()


def test_the_leaderboard_counts_the_voters_whose_votes_it_counts(store: Store) -> None:
    env = {"LAMPLIGHTER_DATA_DIR": str(store.data_dir)}
    shown = CliRunner().invoke(app, ["leaderboard", "--json", "--rounds", "10"], env=env)
    assert shown.exit_code == 0, shown.output
    board = json.loads(shown.output)
    # v1's and v2's seven each and Dora's one; not Vic's ten, nor Vic among the voters.
    assert (board["votes"], board["counted"], board["voters"]) == (25, 15, 3)
    assert [check["votes"] for check in board["suspicious_voters"]] == [10]
    table = CliRunner().invoke(app, ["leaderboard", "--rounds", "10"], env=env)
    assert "15 votes from 3 voters" in table.output
    assert "1 voter left out" in table.output


def test_the_cli_refuses_bad_arguments(store: Store, tmp_path: Path) -> None:
    for args, message in (
        (["rlhf"], "unknown export"),
        (["sft", "--format", "csv"], "unknown --format"),
        (["sft", "--min-trust", "1.5"], "--min-trust"),
        (["sft", "--min-trust", "high"], "Invalid value"),
        (["sft", "--since", "last tuesday"], "Invalid value"),
    ):
        result = _invoke(store, args[0], tmp_path / "out", *args[1:])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
    assert not (tmp_path / "out").exists()


def test_the_same_store_gives_the_same_bytes(store: Store, tmp_path: Path) -> None:
    one = _export(store, "conversations", tmp_path / "one")
    two = _export(store, "conversations", tmp_path / "two")
    assert one["raw"] == two["raw"] and one["card"] == two["card"]
    assert _load(tmp_path / "one", "conversations").column_names == ["messages"]


def test_incremental_exports_carry_deletions(store: Store, tmp_path: Path) -> None:
    since = store.started.isoformat()
    _export(store, "sft", tmp_path, "--since", since)
    deletions = [
        json.loads(line) for line in (tmp_path / "deletions.jsonl").read_text().splitlines()
    ]
    assert {"conversation_id": store.ids["deleted"]} in [
        {k: v for k, v in d.items() if k == "conversation_id"} for d in deletions
    ]
    assert any("user_id" in d for d in deletions)  # Cleo withdrew her consent


def test_an_incremental_export_counts_only_what_is_new_among_what_it_leaves_out(
    store: Store, tmp_path: Path
) -> None:
    """Nothing was written, rated or voted after --since: no rows, and the card's removals
    are empty too (it counted every old vote of a suspicious voter, every old tie, "both bad"
    and "the same", and every conversation of people who do not consent, as if they were
    new)."""
    for kind in ("dpo", "votes", "sft"):
        later = _export(store, kind, tmp_path / kind, "--since", datetime.now(UTC).isoformat())
        assert later["rows"] == []
        for reason in ("suspicious_voter", "no_consent", "low_trust", "discarded_vote"):
            assert f"| {reason}" not in later["card"], (kind, later["card"])
        assert "_vote (no pair)" not in later["card"], (kind, later["card"])


def test_incremental_exports_list_people_suspended_since(store: Store, tmp_path: Path) -> None:
    """Exports leave out people suspended or banned; copies made before must drop them too."""
    copy = Store(tmp_path / "store")
    copy.started = store.started
    copy.data_dir.mkdir()
    for name in ("lamplighter.db", "lamplighter.db-wal", "lamplighter.db-shm"):
        if (store.data_dir / name).exists():
            shutil.copy(store.data_dir / name, copy.data_dir / name)
    email = next(iter(store.emails.values()))

    async def suspend() -> str:
        db = Database(f"sqlite+aiosqlite:///{copy.data_dir / 'lamplighter.db'}")
        try:
            user = await AccountService(db).suspend(email, "spam", until=None, banned=True)
            return str(user.id)
        finally:
            await db.close()

    suspended = asyncio.run(suspend())
    _export(copy, "sft", tmp_path / "out", "--since", store.started.isoformat())
    lines = (tmp_path / "out" / "deletions.jsonl").read_text().splitlines()
    assert [json.loads(line)["suspended"] for line in lines if suspended in line] == [True]


def test_an_incremental_export_has_the_ratings_given_or_changed_since(
    store: Store, tmp_path: Path
) -> None:
    """Both answers were written before ``--since``; one was rated after it for the first time,
    the other rated up before it and down after it: each is a new KTO row, labelled as rated
    now, and the two are a new DPO pair."""
    since = store.rated_late.isoformat()
    kto = _export(store, "kto", tmp_path / "kto", "--since", since)
    late = {
        line["message_id"]: row
        for row, line in zip(kto["rows"], kto["index"], strict=True)
        if line["message_id"] in (store.ids["regenerated_new"], store.ids["regenerated_same"])
    }
    prompt = [{"role": "user", "content": REGENERATED}]
    assert late == {
        store.ids["regenerated_new"]: {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": TERSE}],
            "label": True,
        },
        store.ids["regenerated_same"]: {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": f"You said: {REGENERATED}"}],
            "label": False,
        },
    }
    # Ada's other ratings were given before it: exported before, not again.
    assert store.ids["good"] not in [line["message_id"] for line in kto["index"]]
    dpo = _export(store, "dpo", tmp_path / "dpo", "--since", since)
    rated = [line for line in dpo["index"] if line["source"] == "rating"]
    assert [(line["chosen_id"], line["rejected_id"]) for line in rated] == [
        (store.ids["regenerated_new"], store.ids["regenerated_same"])
    ]


def test_an_assistant_turn_written_by_an_api_client_is_context_never_a_target(
    audit: Store, tmp_path: Path
) -> None:
    # The model never said it: not a demonstration, not a rated completion, not a chosen answer.
    sft = _export(audit, "sft", tmp_path / "sft")
    assert MADE_UP not in [row["messages"][-1]["content"] for row in sft["rows"]]
    assert "| client_written_answer | 1 |" in sft["card"]
    kto = _export(audit, "kto", tmp_path / "kto")
    assert MADE_UP not in [row["completion"][0]["content"] for row in kto["rows"]]
    assert "| client_written_answer | 1 |" in kto["card"]
    dpo = _export(audit, "dpo", tmp_path / "dpo")
    assert not any(MADE_UP in _texts([row]) for row in dpo["rows"])
    assert "| client_written_answer | 1 |" in dpo["card"]
    # It stays as what it is, the context of the answer the service gave after it.
    followed = [row for row in kto["rows"] if row["prompt"][-1]["content"] == ASKED_AFTER]
    assert followed == [
        {
            "prompt": [
                {"role": "user", "content": ASKED_FIRST},
                {"role": "assistant", "content": MADE_UP},
                {"role": "user", "content": ASKED_AFTER},
            ],
            "completion": [{"role": "assistant", "content": f"You said: {ASKED_AFTER}"}],
            "label": True,
        }
    ]


def test_an_answer_under_structured_output_carries_its_format(audit: Store, tmp_path: Path) -> None:
    """The schema an answer follows is in no message: its rows carry it, and it is never
    compared with an answer held to no format."""
    target = [{"role": "assistant", "content": f"You said: {STRUCTURED}"}]
    sft = _export(audit, "sft", tmp_path / "sft")
    [row] = [r for r in sft["rows"] if r["messages"][-1:] == target]
    assert row["response_format"] == LIGHTHOUSE_FORMAT
    assert all("response_format" not in r for r in sft["rows"] if r is not row)
    assert "`response_format`" in sft["card"]
    kto = _export(audit, "kto", tmp_path / "kto")
    [rated] = [r for r in kto["rows"] if r["completion"] == target]
    assert rated["label"] is True and rated["response_format"] == LIGHTHOUSE_FORMAT
    dpo = _export(audit, "dpo", tmp_path / "dpo")
    assert not any(STRUCTURED in _texts([r]) for r in dpo["rows"])
    assert "| format_differs | 1 |" in dpo["card"]
    parquet = _export(audit, "kto", tmp_path / "parquet", "--format", "parquet")
    loaded = _load(tmp_path / "parquet", "kto", "parquet").to_list()
    found = [r for r in loaded if r["completion"][0]["content"] == target[0]["content"]]
    assert [json.loads(r["response_format"]) for r in found] == [LIGHTHOUSE_FORMAT]
    assert len(loaded) == len(parquet["index"]) == len(kto["rows"])


def test_a_tool_round_trip_is_exported_in_openais_fine_tuning_shape(
    audit: Store, tmp_path: Path
) -> None:
    """A call and the answer after its result are demonstrations with the tools offered and
    the calls and call ids in their messages; a text answer to the same question, from where
    no tools were offered, is never paired with the call."""
    call = [
        {
            "id": "call_7",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    calling = [ASK, {"role": "assistant", "content": "", "tool_calls": call}]
    answered = [
        *calling,
        {"role": "tool", "content": "clear", "tool_call_id": "call_7"},
        {"role": "assistant", "content": SUNNY},
    ]
    sft = _export(audit, "sft", tmp_path / "sft")
    tool_rows = [row for row in sft["rows"] if row["messages"][0] == ASK]
    # The call is trained on in its own row, not again in the row of the answer after it.
    assert tool_rows == [
        {"messages": calling, "tools": [WEATHER]},
        {"messages": [ASK, calling[1] | {"weight": 0}, *answered[2:]], "tools": [WEATHER]},
    ]
    assert "`tool_calls`" in sft["card"]
    kto = _export(audit, "kto", tmp_path / "kto")
    rated = [row for row in kto["rows"] if row["prompt"][0] == ASK]
    assert [(row["completion"], row["label"], row["tools"]) for row in rated] == [
        (calling[1:], True, [WEATHER]),
        (answered[-1:], True, [WEATHER]),
    ]
    dpo = _export(audit, "dpo", tmp_path / "dpo")
    assert not any(row["prompt"][0] == ASK for row in dpo["rows"])
    assert "| tools_differ | 1 |" in dpo["card"]
    _export(audit, "kto", tmp_path / "parquet", "--format", "parquet")
    loaded = _load(tmp_path / "parquet", "kto", "parquet").to_list()
    [parquet] = [row for row in loaded if row["completion"][0]["tool_calls"]]
    assert json.loads(parquet["completion"][0]["tool_calls"]) == call
    assert json.loads(parquet["tools"]) == [WEATHER]
    _export(audit, "sft", tmp_path / "sft-parquet", "--format", "parquet")
    weights = [
        [turn["weight"] for turn in row["messages"]]
        for row in _load(tmp_path / "sft-parquet", "sft", "parquet").to_list()
        if row["messages"][0]["content"] == ASK["content"]
    ]
    assert weights == [[None, None], [None, 0, None, None]]
    assert '"weight": 0' in sft["card"]


def test_sft_leaves_out_truncated_answers_and_answers_judged_worse(
    audit: Store, store: Store, tmp_path: Path
) -> None:
    sft = _export(audit, "sft", tmp_path / "audit")
    answers = _answers(sft["rows"])
    # Stopped at max_tokens: a demonstration of stopping mid-sentence.
    assert TRUNCATED not in answers
    assert "| truncated | 1 |" in sft["card"]
    # The person said the regeneration was better: only it is a demonstration.
    assert answers[JUDGED_WORSE] == [TERSE]
    # Also the regeneration the person found worse than the API client's answer.
    assert f"You said: {ASKED_FIRST}" not in answers.get(ASKED_FIRST, [])
    assert "| rejected |" in sft["card"]
    # The losers of side-by-side votes that count; a suspicious voter's votes do not count.
    sft = _export(store, "sft", tmp_path / "store")
    voted = _answers(sft["rows"])
    for question in store.voted["v1"][:6] + store.voted["v2"][:6]:
        assert voted[question] == [f"You said: {question}"]
    for question in store.voted["vic"]:
        assert sorted(voted[question]) == [TERSE, f"You said: {question}"]
    # 12 side-by-side losers, and the answer a regeneration was judged better than.
    assert "| rejected | 13 |" in sft["card"]
    assert "as Chatbot Arena screens voters): 1; their votes do not count" in sft["card"]


def _turns(*texts: str) -> list[dict[str, str]]:
    """A conversation of these texts, from a user's question on, turn and turn about."""
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(texts)
    ]


def _demonstration(*texts: str) -> list[dict[str, Any]]:
    """An SFT row of these texts: the answers before its last one are each a row of their own,
    so they are not trained on again here (OpenAI's ``weight``)."""
    turns: list[dict[str, Any]] = _turns(*texts)
    for turn in turns[:-1]:
        if turn["role"] == "assistant":
            turn["weight"] = 0
    return turns


def test_a_row_is_left_out_when_an_earlier_turn_is_one_not_to_learn_from(
    audit: Store, tmp_path: Path
) -> None:
    # TRL trains on every assistant turn of an SFT row: each must be a demonstration itself.
    sft = _export(audit, "sft", tmp_path / "sft")
    texts = _texts(sft["rows"])
    for text in (ERRED, KRAKEN, DOWNVOTED, MADE_UP):
        assert text not in texts
    healthy = [row["messages"] for row in sft["rows"] if row["messages"][0]["content"] == HEALTHY]
    assert healthy == [
        _turns(HEALTHY, f"You said: {HEALTHY}"),
        # The answer before the regeneration was judged worse (rejected), so only the new one.
        _demonstration(HEALTHY, f"You said: {HEALTHY}", AFTER_HEALTHY, TERSE),
    ]
    # After an error, a flagged answer (its regeneration: the answer before is `rejected`), a
    # rated down one, the API client's.
    assert "| bad_context | 4 |" in sft["card"]
    assert "| error_answer | 1 |" in sft["card"] and "| moderation_flagged | 1 |" in sft["card"]
    # KTO and DPO prompts are context, not trained on: only answers cut, errored or flagged
    # spoil them; an answer rated down or written by the API client does not.
    kto = _export(audit, "kto", tmp_path / "kto")
    prompts = [row["prompt"] for row in kto["rows"]]
    assert not any(turn["content"] in (ERRED, KRAKEN) for prompt in prompts for turn in prompt)
    assert _turns(DOWNVOTED, f"You said: {DOWNVOTED}", AFTER_DOWNVOTE) in prompts
    assert _turns(ASKED_FIRST, MADE_UP, ASKED_AFTER) in prompts
    assert "| bad_context | 2 |" in kto["card"]
    dpo = _export(audit, "dpo", tmp_path / "dpo")
    assert [row["prompt"] for row in dpo["rows"] if len(row["prompt"]) > 1] == [
        _turns(HEALTHY, f"You said: {HEALTHY}", AFTER_HEALTHY)
    ]
    assert "| bad_context | 1 |" in dpo["card"]
    conversations = _export(audit, "conversations", tmp_path / "conversations")
    texts = _texts(conversations["rows"])
    assert ERRED not in texts and KRAKEN not in texts and HEALTHY in texts


def test_dpo_has_no_pair_of_one_answer_twice_nor_a_pair_both_ways(
    audit: Store, tmp_path: Path
) -> None:
    dpo = _export(audit, "dpo", tmp_path)
    assert all(row["chosen"] != row["rejected"] for row in dpo["rows"])
    questions = [row["prompt"][-1]["content"] for row in dpo["rows"]]
    assert SAME_TWICE not in questions
    assert "| identical_pair | 1 |" in dpo["card"]
    # Rated one way, judged the other: the person said both, so neither is exported.
    assert BOTH_WAYS not in questions
    assert "| contradictory_pair | 2 |" in dpo["card"]
    # The same two answers are still in the KTO export, each with its rating.
    kto = _export(audit, "kto", tmp_path / "kto")
    rated = [row for row in kto["rows"] if row["prompt"][-1]["content"] == BOTH_WAYS]
    assert sorted((row["completion"][0]["content"], row["label"]) for row in rated) == [
        (TERSE, True),
        (f"You said: {BOTH_WAYS}", False),
    ]


def test_a_follow_up_is_a_duplicate_only_after_the_same_conversation(
    audit: Store, tmp_path: Path
) -> None:
    sft = _export(audit, "sft", tmp_path)
    more = [row["messages"] for row in sft["rows"] if row["messages"][-2]["content"] == MORE]
    # The prompt is the whole conversation up to the question: these two are different.
    assert more == [
        _demonstration(HOOK_HEAD, f"You said: {HOOK_HEAD}", MORE, f"You said: {MORE}"),
        _demonstration(CORDOUAN, f"You said: {CORDOUAN}", MORE, f"You said: {MORE}"),
    ]
    # The third conversation repeats the first: both of its prompts are duplicates.
    assert "| duplicate_prompt | 2 |" in sft["card"]


# Questions whose labels change between two exports, each in a conversation of its own.
RELABELLED = {
    "unrated": "How were the lenses of a lighthouse cleaned of soot each morning",
    "turned": "Why did keepers paint the floors of the lantern room red",
    "dropped": "How long did a supply of lamp oil last through a winter",
    "uncontradicted": "What did keepers do when a storm cracked the lantern glass",
    "reverdicted": "How often were the clockwork weights of the lens rewound",
    "kept": "How did keepers measure the range of their light at sea",
    "later": "Which keepers wrote the logbooks that historians still read",
}
_IDS = ("conversation_id", "user_id", "message_id", "chosen_id", "rejected_id")


class _Relabeller:
    """One person's answers, each pair an answer and its regeneration by the terse model, and
    the labels they give and take back."""

    def __init__(self, server: LiveServer) -> None:
        self.web, _ = _person(server)
        self.first: dict[str, str] = {}  # question name -> first answer's id
        self.second: dict[str, str] = {}  # question name -> the regeneration's id

    def ask(self, name: str, *, regenerate: bool = True) -> None:
        first = self.web.chat(content=RELABELLED[name], model=SCRIPTED)
        self.first[name] = _done(first)["id"]
        if regenerate:
            conversation, question = (
                first[0][1]["conversation_id"],
                first[0][1]["user_message"]["id"],
            )
            again = self.web.chat(
                conversation_id=conversation, parent_id=question, model=TERSE_MODEL
            )
            self.second[name] = _done(again)["id"]

    def rate(self, answer: str, rating: int | None) -> None:
        rate(self.web, answer, rating)

    def judge(self, name: str, verdict: str) -> None:
        judge(self.web, self.second[name], verdict)


def rate(web: Browserless, answer: str, rating: int | None) -> None:
    """Rate an answer in the web chat (None: take the rating back)."""
    url = f"/messages/{answer}/rating"
    if rating is None:
        assert web.api("DELETE", url).status_code == 204
    else:
        rated = web.api("PUT", url, json={"rating": rating})
        assert rated.is_success, rated.text


def judge(web: Browserless, answer: str, verdict: str) -> None:
    """Say whether a regenerated answer is better than the one before it; the verdict counts."""
    said = web.api("PUT", f"/messages/{answer}/verdict", json={"verdict": verdict})
    assert said.is_success and said.json()["discarded"] is None, said.text


def _keyed(kind: str, export: dict[str, Any]) -> dict[Any, tuple[Any, dict[str, Any]]]:
    """An export's rows with their index lines, by the ids that name a row of its kind."""

    def key(line: dict[str, Any]) -> Any:
        return (line["chosen_id"], line["rejected_id"]) if kind == "dpo" else line["message_id"]

    return {
        key(line): (row, line) for row, line in zip(export["rows"], export["index"], strict=True)
    }


def _deletions_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "deletions.jsonl").read_text().splitlines()]


def _applied(
    kind: str, copy: dict[Any, tuple[Any, dict[str, Any]]], later: dict[str, Any], out: Path
) -> dict[Any, tuple[Any, dict[str, Any]]]:
    """A copy brought up to date by an incremental export as docs/flywheel.md says: first drop
    every row that a line of deletions.jsonl names (all the ids the line gives are the row's; a
    message is the row's whether its answer, chosen or rejected one), then add each new row,
    replacing the earlier row with the same ids."""

    def ids(line: dict[str, Any]) -> set[tuple[str, Any]]:
        named = {(key, line[key]) for key in _IDS if key in line}
        answers = ("message_id", "chosen_id", "rejected_id")
        return named | {("message_id", line[key]) for key in answers if key in line}

    gone = [{(k, v) for k, v in deletion.items() if k in _IDS} for deletion in _deletions_of(out)]
    kept = {key: row for key, row in copy.items() if not any(g <= ids(row[1]) for g in gone)}
    return kept | _keyed(kind, later)


def test_incremental_exports_withdraw_the_rows_whose_labels_were_taken_back(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A full export, then twice ratings removed, changed and given again and a verdict said
    again, each time an incremental export since the one before: deletions.jsonl names each
    earlier row that no longer stands, and the copy the exports keep up to date is each time
    the fresh full export, row for row."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED), ScriptedBackend(TERSE_MODEL, reply=lambda _: TERSE)]

    data_dir = tmp_path_factory.mktemp("relabelled")
    config = data_dir / "plain.toml"
    config.write_text(ROOMY_PLAN)
    made = Store(data_dir)
    kinds = ("kto", "dpo")
    with LiveServer(make_settings(data_dir, config=config, embedded_engine=False), backends) as s:
        person = _Relabeller(s)
        first, second = person.first, person.second
        person.ask("unrated", regenerate=False)
        person.rate(first["unrated"], 1)
        for name in ("turned", "dropped", "kept"):
            person.ask(name)
            person.rate(first[name], 1)
            person.rate(second[name], -1)
        # Judged worse than the first answer, rated the other way round: contradictory.
        person.ask("uncontradicted")
        person.judge("uncontradicted", "worse")
        person.rate(first["uncontradicted"], -1)
        person.rate(second["uncontradicted"], 1)
        person.ask("reverdicted")
        person.judge("reverdicted", "better")
        exported = datetime.now(UTC)
        copies = {kind: _keyed(kind, _export(made, kind, tmp_path / f"{kind}-0")) for kind in kinds}
        turned = (first["turned"], second["turned"])
        assert first["unrated"] in copies["kto"] and turned in copies["dpo"]

        def relabel(step: int) -> None:
            if step == 1:
                person.rate(first["unrated"], None)  # the person un-rates the answer
                person.rate(first["turned"], -1)  # both rated down: no pair
                person.rate(second["dropped"], None)  # no pair either
                person.rate(first["uncontradicted"], None)  # the verdict's pair stands now
                person.judge("reverdicted", "worse")  # the pair the other way round
                person.ask("later")
                person.rate(first["later"], 1)
                person.rate(second["later"], -1)
            else:  # some labels come back, others go
                person.rate(first["unrated"], -1)
                person.rate(first["turned"], 1)
                person.rate(second["dropped"], -1)
                person.judge("reverdicted", "same")
                person.rate(first["later"], None)

        for step in (1, 2):
            relabel(step)
            since, exported = exported.isoformat(), datetime.now(UTC)
            for kind in kinds:
                out = tmp_path / f"{kind}-{step}-since"
                later = _export(made, kind, out, "--since", since)
                now = _keyed(kind, _export(made, kind, tmp_path / f"{kind}-{step}"))
                assert now != copies[kind]  # the labels did change
                copies[kind] = _applied(kind, copies[kind], later, out)
                assert copies[kind] == now, (kind, step)
                withdrawn = [
                    {k: v for k, v in line.items() if k != "at"}
                    for line in _deletions_of(out)
                    if "withdrawn" in line
                ]
                counted = f"their labels withdrawn or changed since: {len(withdrawn)} ("
                assert counted in later["card"]
                if (kind, step) == ("kto", 1):
                    unrated = {"message_id": first["unrated"], "withdrawn": "rating_removed"}
                    assert unrated in withdrawn
                if (kind, step) == ("dpo", 1):
                    pair = {"chosen_id": turned[0], "rejected_id": turned[1]}
                    assert pair | {"withdrawn": "rating_changed"} in withdrawn
                    pair = {"chosen_id": second["reverdicted"], "rejected_id": first["reverdicted"]}
                    assert pair | {"withdrawn": "verdict_changed"} in withdrawn
        person.web.close()
        s.close_clients()
