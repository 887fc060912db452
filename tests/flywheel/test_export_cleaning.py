"""What an export must clean beyond the messages' text: personal data in tool calls' arguments,
rows that repeat one another, answers stopped at the length limit offered as good ones; and the
card's count of the conversations that gave rows. Data made through the real API and web chat,
exported with the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamplighter.conversation.threading import Turn, node_hash
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.settings import Settings
from lamplighter.store.models import Comparison, Message, new_id, utcnow
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.flywheel.test_export import Store, _done, _export, _load, _messages, _person
from tests.test_router import sse
from tests.upstream_server import recording

MAILER = "mailer"
SEND_EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "body"],
        },
    },
}
MAIL_ASK = {"role": "user", "content": "Please send my weekly report to my manager"}
# What the model puts in its call: what the person told it, personal data and all.
ARGUMENTS = {"to": "margaret.hughes@acme-corp.com", "body": "Call me back on +1 415 555 0199."}
SENT = "I have sent your weekly report to your manager."
# Two answers of one temperature-0 request made twice; an answer corrected twice the same way,
# and once with a full stop more.
TWICE = "What is the chemical symbol for gold in the periodic table"
CORRECTED = "Name the longest river that flows through Egypt"
CORRECTION = "The Nile is the longest river flowing through Egypt."
# Answers stopped at the length limit: one rated up over a complete answer rated down, one
# rated down under a complete answer rated up.
CUT_RATED_UP = "List ten fruits with one surprising fact about each of them"
CUT_RATED_DOWN = "Describe in detail how a steam locomotive turns coal into motion"


# A person who gives their name, and a model that greets them by it and names people it made up.
GREETER = "greeter"
INTRODUCED = "My name is Margaret Hughes, please greet me."
GREETING = "Hello Margaret! I am Zara, and Oliver will help you. Regards, Zara"


def _mailer(body: dict[str, Any]) -> bytes:
    """An OpenAI-compatible backend that calls send_email with what it was told, then says it
    did once the tool has answered."""
    if body["messages"][-1]["role"] == "tool":
        delta: dict[str, Any] = {"role": "assistant", "content": SENT}
        finish = "stop"
    else:
        call = {"name": "send_email", "arguments": json.dumps(ARGUMENTS)}
        delta = {
            "role": "assistant",
            "tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": call}],
        }
        finish = "tool_calls"
    choice = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9}}
    return sse(choice, usage, "[DONE]")


def _mailed(server: LiveServer) -> None:
    """A tool round trip whose call carries an e-mail address and a phone number; both
    answers rated up."""
    web, client = _person(server)
    first = client.chat.completions.create(
        model=MAILER,
        messages=[MAIL_ASK],  # type: ignore[list-item]
        tools=[SEND_EMAIL],  # type: ignore[list-item]
    )
    call = first.choices[0].message
    result = {"role": "tool", "tool_call_id": "call_9", "content": "sent"}
    client.chat.completions.create(
        model=MAILER,
        messages=[MAIL_ASK, call.model_dump(), result],  # type: ignore[list-item]
        tools=[SEND_EMAIL],  # type: ignore[list-item]
    )
    stored = _messages(web)
    for text in ("", SENT):
        rated = web.api("PUT", f"/messages/{stored[text]['id']}/rating", json={"rating": 1})
        assert rated.is_success, rated.text
    web.close()


def _stored_correction(server: LiveServer, answer_id: str, content: str) -> None:
    """A correction of an answer, stored as the web chat stores one (a sibling answer the
    person wrote, preferred to the original), with no check of what it says: the web chat now
    refuses one that repeats another, or the answer, but the store holds those made before."""

    async def store(services: Any) -> None:
        async with services.db.transaction() as session:
            original = await session.get(Message, uuid.UUID(answer_id))
            question = await session.get(Message, original.parent_id)
            now = utcnow()
            rewrite = Message(
                id=new_id(),
                conversation_id=original.conversation_id,
                user_id=original.user_id,
                parent_id=question.id,
                role="assistant",
                content=content,
                path_hash=node_hash(question.path_hash, Turn("assistant", content)),
                depth=original.depth,
                status="complete",
                finish_reason="stop",
                author="person",
                created_at=now,
                updated_at=now,
            )
            session.add(rewrite)
            await session.flush()  # before the comparison that names it
            session.add(
                Comparison(
                    user_id=original.user_id,
                    conversation_id=original.conversation_id,
                    question_id=question.id,
                    a_id=original.id,
                    b_id=rewrite.id,
                    kind="correction",
                    a_variant=original.model,
                    b_variant="person",
                    winner="b",
                    created_at=now,
                    voted_at=now,
                )
            )

    server.call(store)


def _repeated(server: LiveServer) -> None:
    """One temperature-0 request made twice; an answer corrected twice with the same text, and
    once more with only a full stop added."""
    web, client = _person(server)
    for _ in range(2):
        client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": TWICE}], temperature=0
        )
    original = _done(web.chat(content=CORRECTED, model=SCRIPTED))
    for content in (CORRECTION, CORRECTION, original["content"] + " ."):
        _stored_correction(server, original["id"], content)
    web.close()


def _named(server: LiveServer) -> None:
    """A greeting rated up: the name the person gave, and names the model made up."""
    web, _ = _person(server)
    answer = _done(web.chat(content=INTRODUCED, model=GREETER))
    rated = web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": 1})
    assert rated.is_success, rated.text
    web.close()


def _cut_short(server: LiveServer) -> None:
    """Answers stopped at the length limit, each regenerated whole in the web chat and rated
    the other way."""
    web, client = _person(server)
    for question, cut_rating in ((CUT_RATED_UP, 1), (CUT_RATED_DOWN, -1)):
        cut_short = client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": question}], max_tokens=3
        )
        assert cut_short.choices[0].finish_reason == "length"
        conversation = web.api("GET", "/conversations").json()["data"][0]["id"]
        asked, cut = web.tree(conversation)["messages"]
        whole = _done(web.chat(conversation_id=conversation, parent_id=asked["id"]))
        for answer, rating in ((cut, cut_rating), (whole, -cut_rating)):
            rated = web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": rating})
            assert rated.is_success, rated.text
    web.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    data_dir = tmp_path_factory.mktemp("cleaning")
    config = data_dir / "plain.toml"
    config.write_text(ROOMY_PLAN)
    with recording(_mailer) as (url, _):
        mailer = UpstreamConfig("mailer", url, (MAILER,), capacity=2)

        async def backends(_: Settings) -> list[Backend]:
            greeter = ScriptedBackend(GREETER, reply=lambda _: GREETING)
            return [ScriptedBackend(SCRIPTED), greeter, UpstreamBackend(mailer)]

        settings = make_settings(data_dir, config=config, embedded_engine=False)
        with LiveServer(settings, backends) as server:
            _mailed(server)
            _repeated(server)
            _cut_short(server)
            _named(server)
            server.close_clients()
    yield Store(data_dir)


def _calls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The arguments of every tool call in the rows, as JSON."""
    return [
        json.loads(call["function"]["arguments"])
        for row in rows
        for value in row.values()
        if isinstance(value, list)
        for turn in value
        if isinstance(turn, dict) and turn.get("tool_calls")
        for call in (
            turn["tool_calls"]
            if isinstance(turn["tool_calls"], list)
            else json.loads(turn["tool_calls"])  # Parquet's JSON text
        )
    ]


SCRUBBED = {"to": "[EMAIL]", "body": "Call me back on [PHONE]."}


@pytest.mark.parametrize("kind", ["sft", "kto", "conversations"])
def test_personal_data_in_tool_call_arguments_is_scrubbed(
    made: Store, tmp_path: Path, kind: str
) -> None:
    """A call's arguments are what the person said, passed on: scrubbed as messages are, still
    JSON, and counted in the card."""
    export = _export(made, kind, tmp_path / "jsonl")
    raw = export["raw"].decode()
    assert "margaret" not in raw and "555 0199" not in raw
    calls = _calls(export["rows"])
    assert calls and all(call == SCRUBBED for call in calls)
    assert "| EMAIL | 1 |" in export["card"] and "| PHONE | 1 |" in export["card"]
    _export(made, kind, tmp_path / "parquet", "--format", "parquet")
    loaded = _load(tmp_path / "parquet", kind, "parquet").to_list()
    assert _calls(loaded) == calls


def _unique(rows: list[dict[str, Any]]) -> bool:
    return len({json.dumps(row, sort_keys=True) for row in rows}) == len(rows)


def test_sft_and_dpo_rows_are_each_exported_once(made: Store, tmp_path: Path) -> None:
    """Two answers of one text to one question are one demonstration (the later: the earlier
    was asked again), and two corrections of one text one pair; a correction that only adds a
    full stop is nothing to prefer."""
    sft = _export(made, "sft", tmp_path / "sft")
    assert _unique(sft["rows"])
    answers = {
        question: [
            row["messages"][-1]["content"]
            for row in sft["rows"]
            if row["messages"][0]["content"] == question
        ]
        for question in (TWICE, CORRECTED)
    }
    assert answers == {
        TWICE: [f"You said: {TWICE}"],
        CORRECTED: [CORRECTION, f"You said: {CORRECTED} ."],
    }
    # The first of the two answers was asked again and left; the same correction twice.
    assert "| regenerated | 1 |" in sft["card"] and "| duplicate_row | 1 |" in sft["card"]
    dpo = _export(made, "dpo", tmp_path / "dpo")
    assert _unique(dpo["rows"])
    corrected = [row for row in dpo["rows"] if row["prompt"][-1]["content"] == CORRECTED]
    assert [row["chosen"][0]["content"] for row in corrected] == [CORRECTION]
    assert "| duplicate_row | 1 |" in dpo["card"] and "| identical_pair | 1 |" in dpo["card"]


def test_an_answer_cut_at_the_length_limit_is_never_a_good_example(
    made: Store, tmp_path: Path
) -> None:
    """Neither a KTO positive nor a DPO chosen answer; rated down, or rejected, it still is."""
    kto = _export(made, "kto", tmp_path / "kto")
    labels = {
        question: sorted(
            (len(row["completion"][0]["content"].split()) > 3, row["label"])
            for row in kto["rows"]
            if row["prompt"][-1]["content"] == question
        )
        for question in (CUT_RATED_UP, CUT_RATED_DOWN)
    }
    # (whole, label): the cut answer rated up is left out.
    assert labels == {CUT_RATED_UP: [(True, False)], CUT_RATED_DOWN: [(False, False), (True, True)]}
    assert "| truncated | 1 |" in kto["card"]
    dpo = _export(made, "dpo", tmp_path / "dpo")
    questions = [row["prompt"][-1]["content"] for row in dpo["rows"]]
    assert CUT_RATED_UP not in questions and questions.count(CUT_RATED_DOWN) == 1
    assert "| truncated_chosen | 1 |" in dpo["card"]


def test_the_card_counts_the_conversations_that_gave_rows(made: Store, tmp_path: Path) -> None:
    for kind in ("sft", "kto", "dpo", "conversations"):
        export = _export(made, kind, tmp_path / kind)
        conversations = {line["conversation_id"] for line in export["index"]}
        rows = len(export["rows"])
        assert f"- Rows: {rows} (from {len(conversations)} conversations)" in export["card"]


def test_names_a_model_made_up_are_kept_and_those_it_was_told_are_not(
    made: Store, tmp_path: Path
) -> None:
    """A model's answer is scrubbed of the names the conversation told it; the names it made up
    ("I am Zara") were replaced too, which taught it to write placeholders."""
    sft = _export(made, "sft", tmp_path)
    [row] = [row for row in sft["rows"] if "greet me" in row["messages"][0]["content"]]
    question, answer = row["messages"]
    assert question["content"] == "My name is [NAME], please greet me."
    assert answer["content"] == "Hello [NAME]! I am Zara, and Oliver will help you. Regards, Zara"
