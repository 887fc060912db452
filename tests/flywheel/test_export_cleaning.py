"""What an export must clean beyond the messages' text: personal data in tool calls' arguments.
Data made through the real API and web chat, exported with the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.flywheel.test_export import Store, _export, _load, _messages, _person
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


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    data_dir = tmp_path_factory.mktemp("cleaning")
    config = data_dir / "plain.toml"
    config.write_text(ROOMY_PLAN)
    with recording(_mailer) as (url, _):
        mailer = UpstreamConfig("mailer", url, (MAILER,), capacity=2)

        async def backends(_: Settings) -> list[Backend]:
            return [ScriptedBackend(SCRIPTED), UpstreamBackend(mailer)]

        settings = make_settings(data_dir, config=config, embedded_engine=False)
        with LiveServer(settings, backends) as server:
            _mailed(server)
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
