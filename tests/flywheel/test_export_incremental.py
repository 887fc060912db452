"""Incremental exports give what is new since the export before: all the rows of someone who
consented since, their older conversations and labels included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.flywheel.test_export import TERSE, TERSE_MODEL, Store, _done, _export
from tests.web.conftest import Browserless, Person, new_person

KINDS = ("sft", "conversations", "kto", "dpo")
ASKED = {"dave": "What did a lighthouse keeper write in the daily log book"}


class _Person:
    """Someone in the web chat, their answers by question name."""

    def __init__(self, server: LiveServer, person: Person) -> None:
        self.person = person
        self.web = Browserless(server.base_url)
        self.web.login(person)
        self.answer: dict[str, str] = {}  # question name -> its first answer's id
        self.conversation: dict[str, str] = {}
        self.question: dict[str, str] = {}

    def consent(self) -> None:
        put = self.web.api("PUT", "/me/consent", json={"use_for_training": True})
        assert put.is_success, put.text

    def ask(self, name: str) -> None:
        events = self.web.chat(content=ASKED[name], model=SCRIPTED)
        self.conversation[name] = events[0][1]["conversation_id"]
        self.question[name] = events[0][1]["user_message"]["id"]
        self.answer[name] = _done(events)["id"]

    def regenerate(self, name: str, model: str) -> str:
        events = self.web.chat(
            conversation_id=self.conversation[name], parent_id=self.question[name], model=model
        )
        message: str = events[0][1]["message"]["id"]
        return message

    def rate(self, answer: str, rating: int) -> None:
        rated = self.web.api("PUT", f"/messages/{answer}/rating", json={"rating": rating})
        assert rated.is_success, rated.text

    def close(self) -> None:
        self.web.close()


async def _backends(_: Settings) -> list[Backend]:
    return [ScriptedBackend(SCRIPTED), ScriptedBackend(TERSE_MODEL, reply=lambda _: TERSE)]


def test_an_incremental_export_has_every_row_of_someone_who_consented_since(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Dave's answers and ratings are older than the export before, which did not have them:
    he had left consent to the organisation's default (no). He consents after it: the next
    incremental export has all his rows, in every kind, as a full export has them."""
    data_dir = tmp_path_factory.mktemp("consented")
    config = data_dir / "plain.toml"
    config.write_text(ROOMY_PLAN)
    made = Store(data_dir)
    with LiveServer(make_settings(data_dir, config=config, embedded_engine=False), _backends) as s:
        dave = _Person(s, new_person(s, plan="roomy"))
        dave.ask("dave")
        dave.rate(dave.answer["dave"], 1)
        dave.rate(dave.regenerate("dave", TERSE_MODEL), -1)
        since = datetime.now(UTC).isoformat()
        assert _export(made, "kto", tmp_path / "before")["rows"] == []
        dave.consent()
        for kind in KINDS:
            later = _export(made, kind, tmp_path / kind, "--since", since)
            full = _export(made, kind, tmp_path / f"{kind}-full")
            assert later["rows"], kind
            assert (later["rows"], later["index"]) == (full["rows"], full["index"]), kind
        dave.close()
        s.close_clients()
