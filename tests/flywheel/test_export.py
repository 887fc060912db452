"""Exports end to end: data made through the real web chat and API, exported with the CLI,
loaded with `datasets.load_dataset` as their users will; consent, deletion, cleaning and
determinism checked on the files themselves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasets
import pytest
from typer.testing import CliRunner

from lamplighter.cli import app
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.web.conftest import Browserless, new_person

QUESTION = "Tell me about the lighthouse keepers of Maine"


class Store:
    """What the fixture made, for the tests to look for."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ids: dict[str, str] = {}
        self.started = datetime.now(UTC)


def _web(server: LiveServer, *, consent: bool | None) -> tuple[Browserless, str]:
    person = new_person(server, plan="roomy")
    web = Browserless(server.base_url)
    web.login(person)
    if consent is not None:
        web.api("PUT", "/me/consent", json={"use_for_training": consent})
    return web, person.email


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    data_dir = tmp_path_factory.mktemp("flywheel")
    config = data_dir / "lamplighter.toml"
    config.write_text("[plans.roomy]\nrequests_per_minute = 100000\n")
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    made = Store(data_dir)
    with LiveServer(settings, backends) as server:
        ada, _ = _web(server, consent=True)
        first = ada.chat(content=QUESTION, model=SCRIPTED)
        conversation, question = first[0][1]["conversation_id"], first[0][1]["user_message"]["id"]
        good = first[-1][1]["message"]["id"]
        bad = ada.chat(conversation_id=conversation, parent_id=question, model=SCRIPTED)[-1][1][
            "message"
        ]["id"]
        ada.api("PUT", f"/messages/{good}/rating", json={"rating": 1})
        ada.api("PUT", f"/messages/{bad}/rating", json={"rating": -1, "reasons": ["too_long"]})
        made.ids.update(good=good, bad=bad, conversation=conversation)
        ada.chat(
            content="My email is ada.lovelace@example.org and my card is 4111 1111 1111 1111",
            model=SCRIPTED,
        )
        ada.chat(content="  tell me about the LIGHTHOUSE keepers of maine ", model=SCRIPTED)
        ada.chat(content="hi", model=SCRIPTED)  # a one-word exchange
        ada.close()

        bob, _ = _web(server, consent=None)  # the organisation's default: no
        bob.chat(content="Bob's private thoughts on the merger", model=SCRIPTED)
        bob.close()

        cleo, _ = _web(server, consent=True)
        gone = cleo.chat(content="Cleo's conversation that she deletes", model=SCRIPTED)
        made.ids["deleted"] = gone[0][1]["conversation_id"]
        cleo.api("DELETE", f"/conversations/{made.ids['deleted']}")
        cleo.chat(content="Cleo changes her mind about training", model=SCRIPTED)
        cleo.api("PUT", "/me/consent", json={"use_for_training": False})
        cleo.close()
    yield made


def _export(store: Store, kind: str, out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        app,
        ["export", kind, "--out", str(out), *extra],
        env={"LAMPLIGHTER_DATA_DIR": str(store.data_dir)},
    )
    assert result.exit_code == 0, result.output
    return {
        "rows": [json.loads(line) for line in (out / f"{kind}.jsonl").read_text().splitlines()],
        "card": (out / "README.md").read_text(),
        "raw": (out / f"{kind}.jsonl").read_bytes(),
    }


def _load(out: Path, kind: str) -> datasets.Dataset:
    loaded = datasets.load_dataset("json", data_files=str(out / f"{kind}.jsonl"), split="train")
    assert isinstance(loaded, datasets.Dataset)
    return loaded


def test_sft_has_exactly_the_trl_fields_and_only_consenting_clean_rows(
    store: Store, tmp_path: Path
) -> None:
    export = _export(store, "sft", tmp_path)
    loaded = _load(tmp_path, "sft")
    assert loaded.column_names == ["messages"]
    texts = [m["content"] for row in export["rows"] for m in row["messages"]]
    assert any(t == QUESTION for t in texts)
    assert not any("Bob" in t or "Cleo" in t for t in texts)  # no consent (now)
    assert not any("ada.lovelace@example.org" in t or "4111" in t for t in texts)
    assert any("[EMAIL]" in t and "[CARD]" in t for t in texts)
    # The regeneration rated down is not a demonstration; the near-duplicate and "hi" are out.
    assert len(export["rows"]) == 2
    card = export["card"]
    for reason in ("rated_down", "one_word_exchange", "no_consent (conversations)"):
        assert reason in card
    assert "near_duplicate_prompt" in card or "duplicate_prompt" in card
    assert "| EMAIL | " in card and "SHA-256" in card


def test_kto_and_dpo_come_from_the_rated_regeneration(store: Store, tmp_path: Path) -> None:
    _export(store, "kto", tmp_path / "kto")
    kto = _load(tmp_path / "kto", "kto")
    assert kto.column_names == ["prompt", "completion", "label"]
    assert sorted(kto["label"]) == [False, True]
    assert kto[0]["prompt"] == [{"role": "user", "content": QUESTION}]
    _export(store, "dpo", tmp_path / "dpo")
    dpo = _load(tmp_path / "dpo", "dpo")
    assert dpo.column_names == ["prompt", "chosen", "rejected"]
    assert len(dpo) == 1 and dpo[0]["chosen"][0]["role"] == "assistant"
    index = [
        json.loads(line) for line in (tmp_path / "dpo" / "index.jsonl").read_text().splitlines()
    ]
    assert index == [
        {
            "conversation_id": store.ids["conversation"],
            "user_id": index[0]["user_id"],
            "chosen_id": store.ids["good"],
            "rejected_id": store.ids["bad"],
        }
    ]


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
