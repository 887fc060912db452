"""A NUL character (valid Unicode, valid JSON) in a question or an answer: PostgreSQL's text
cannot hold one, and refused the whole write; every database stores U+FFFD instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
