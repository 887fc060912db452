"""A NUL character (valid Unicode, valid JSON) in a question or an answer: PostgreSQL's text
cannot hold one, and refused the whole write; every database stores U+FFFD instead. In a chat
completion's ``metadata``, or in a metadata filter, it is a 400 naming the field: PostgreSQL
cannot read a ``\\u0000`` out of JSON, so one stored NUL made every later
``GET /v1/chat/completions?metadata[k]=v`` of its owner a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, make_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    database = {}
    if request.param == "postgresql":
        database["database_url"] = request.getfixturevalue("postgres_url")
    settings = make_settings(tmp_path, embedded_engine=False, **database)
    with LiveServer(settings, backends) as live:
        yield live
        live.close_clients()


def test_a_nul_character_is_stored_as_a_replacement_character(gateway: LiveServer) -> None:
    client = gateway.client(gateway.new_user(plan="team")[1])
    asked = {"model": SCRIPTED, "messages": [{"role": "user", "content": "lamp\x00light"}]}
    whole = client.chat.completions.create(**asked, store=True)  # type: ignore[call-overload]
    assert whole.choices[0].message.content == "You said: lamp\x00light"  # as it was generated
    streamed = client.chat.completions.create(**asked, stream=True)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    stored = client.chat.completions.retrieve(whole.id)
    assert stored.choices[0].message.content == "You said: lamp\ufffdlight"
    (question,) = [m for m in client.chat.completions.messages.list(whole.id) if m.role == "user"]
    assert question.content == "lamp\ufffdlight"


HELLO: Any = [{"role": "user", "content": "tagged"}]


def refusal(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as refused:
        call()
    error = refused.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert "NUL character" in error.message
    return error


def test_a_nul_in_metadata_is_refused_and_the_filter_keeps_working(gateway: LiveServer) -> None:
    client = gateway.client(gateway.new_user(plan="team")[1])
    kept = client.chat.completions.create(
        model=SCRIPTED, messages=HELLO, store=True, metadata={"team": "a"}
    )

    def create(metadata: dict[str, str]) -> Any:
        return lambda: client.chat.completions.create(
            model=SCRIPTED, messages=HELLO, store=True, metadata=metadata
        )

    assert refusal(create({"k": "v\x00w"})).param == "metadata.k"
    assert refusal(create({"k\x00": "v"})).param == "metadata"
    changed = refusal(lambda: client.chat.completions.update(kept.id, metadata={"team": "\x00"}))
    assert changed.param == "metadata.team"
    answered = refusal(
        lambda: client.responses.create(model=SCRIPTED, input="hi", metadata={"k": "\x00"})
    )
    assert answered.param == "metadata.k"
    assert client.chat.completions.retrieve(kept.id).metadata == {"team": "a"}

    # Nothing with a NUL was stored: filtering goes on working, for any key.
    assert [c.id for c in client.chat.completions.list(metadata={"team": "a"})] == [kept.id]
    assert list(client.chat.completions.list(metadata={"k": "x"})) == []
    filtered = refusal(lambda: client.chat.completions.list(metadata={"team": "a\x00"}))
    assert filtered.param == "metadata"
    assert refusal(lambda: client.chat.completions.list(metadata={"t\x00": "a"})).param == (
        "metadata"
    )
    # The same connection serves the next request (a 500 used to reset it).
    assert [c.id for c in client.chat.completions.list(metadata={"team": "a"})] == [kept.id]
