"""Incremental exports keep a copy up to date: each applied to the copy the exports before it
made (its deletions.jsonl first, then its rows) gives what a fresh full export gives, for SFT
and conversations as for KTO and DPO, while labels change, branches move and people consent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import FAILING, ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.flywheel.test_export import (
    SIDE_BY_SIDE_CONFIG,
    TERSE,
    TERSE_MODEL,
    Store,
    _applied,
    _deletions_of,
    _done,
    _export,
    _keyed,
    judge,
    rate,
)
from tests.web.conftest import Browserless, Person, new_person

KINDS = ("sft", "conversations", "kto", "dpo")
# A question each, in a conversation of its own.
ASKED = {
    "down": "How did keepers keep the lamp glass free of salt spray",
    "corrected": "Which lighthouse guards the entrance to the Firth of Forth",
    "worse": "What kind of clock drove the rotating lens of a lighthouse",
    "both_bad": "Why do some lighthouses show a red sector in their light",
    "twice": "How many keepers usually lived at a rock lighthouse at once",
    "moved": "When did the last keeper leave the Longships lighthouse",
    "continued": "How were supplies landed at lighthouses without a harbour",
    "cut": "Describe the journey of a relief keeper from the mainland to the rock",
    "dave": "What did a lighthouse keeper write in the daily log book",
    "left": "What fuel did lighthouse lamps burn before electricity came",
}
FOLLOW_UPS = {
    "down": "And how often did they have to do that in winter storms",
    "continued": "Who paid for the boats that carried those supplies",
    "left": "Which of those fuels gave the brightest and steadiest light",
}


class _Person:
    """Someone in the web chat (and over the API), their answers by question name."""

    def __init__(self, server: LiveServer, person: Person) -> None:
        self.person = person
        self.web = Browserless(server.base_url)
        self.web.login(person)
        key = server.call(lambda s: s.accounts.create_key(person.email, "test")).secret
        self.client = server.client(key)
        self.answer: dict[str, str] = {}  # question name -> its first answer's id
        self.conversation: dict[str, str] = {}
        self.question: dict[str, str] = {}

    def consent(self) -> None:
        put = self.web.api("PUT", "/me/consent", json={"use_for_training": True})
        assert put.is_success, put.text

    def ask(self, name: str) -> list[tuple[str, Any]]:
        events = self.web.chat(content=ASKED[name], model=SCRIPTED)
        self.conversation[name] = events[0][1]["conversation_id"]
        self.question[name] = events[0][1]["user_message"]["id"]
        if name != "both_bad":
            self.answer[name] = _done(events)["id"]
        return events

    def regenerate(self, name: str, model: str) -> str:
        events = self.web.chat(
            conversation_id=self.conversation[name], parent_id=self.question[name], model=model
        )
        message: str = events[0][1]["message"]["id"]
        return message

    def follow(self, name: str) -> str:
        events = self.web.chat(
            conversation_id=self.conversation[name],
            parent_id=self.answer[name],
            content=FOLLOW_UPS[name],
            model=SCRIPTED,
        )
        return _done(events)["id"]

    def rate(self, answer: str, rating: int | None) -> None:
        rate(self.web, answer, rating)

    def judge(self, answer: str, verdict: str) -> None:
        judge(self.web, answer, verdict)

    def ask_over_the_api(self, name: str, **options: Any) -> str:
        asked = [{"role": "user", "content": ASKED[name]}]
        answer = self.client.chat.completions.create(model=SCRIPTED, messages=asked, **options)
        return answer.choices[0].finish_reason

    def close(self) -> None:
        self.web.close()


async def _backends(_: Settings) -> list[Backend]:
    return [
        ScriptedBackend(SCRIPTED),
        ScriptedBackend(TERSE_MODEL, reply=lambda _: TERSE),
        ScriptedBackend(FAILING, fail_after=3),
    ]


def _withdrawn(out: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in line.items() if k != "at"}
        for line in _deletions_of(out)
        if "withdrawn" in line
    ]


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


def test_incremental_exports_of_every_kind_keep_a_copy_up_to_date(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A full export, then twice labels given and taken back, branches moved and a person
    consenting, each time an incremental export since the one before: deletions.jsonl names
    each earlier SFT row whose labels changed (a thumbs-down, a correction, a "worse" verdict,
    a both-bad vote, on it or before it, a regeneration left without a word) and each
    conversation that changed, and the copy the exports keep up to date is each time the fresh
    full export, row for row."""
    data_dir = tmp_path_factory.mktemp("incremental")
    plain, side_by_side = data_dir / "plain.toml", data_dir / "side_by_side.toml"
    plain.write_text(ROOMY_PLAN)
    side_by_side.write_text(ROOMY_PLAN + SIDE_BY_SIDE_CONFIG)
    made = Store(data_dir)
    # First, a question answered side by side, not voted on yet: two demonstrations.
    settings = make_settings(data_dir, config=side_by_side, embedded_engine=False)
    with LiveServer(settings, _backends) as server:
        pat = _Person(server, new_person(server, plan="roomy"))
        pat.consent()
        events = pat.ask("both_bad")
        comparison = next(p for name, p in events if name == "pair")["comparison"]
        pat.close()
        server.close_clients()
    settings = make_settings(data_dir, config=plain, embedded_engine=False)
    with LiveServer(settings, _backends) as server:
        pat = _Person(server, pat.person)
        for name in ("down", "corrected", "worse", "moved", "continued", "left"):
            pat.ask(name)
        down_more = pat.follow("down")
        worse = pat.regenerate("worse", TERSE_MODEL)
        assert pat.ask_over_the_api("twice", temperature=0) == "stop"
        assert pat.ask_over_the_api("cut", max_tokens=3) == "length"
        [cut] = [
            m["id"]
            for c in pat.web.api("GET", "/conversations").json()["data"]
            for m in pat.web.tree(c["id"])["messages"]
            if m["role"] == "assistant" and m["finish_reason"] == "length"
        ]
        pat.rate(cut, -1)
        # Dave leaves consent to the organisation's default (no), with rated answers.
        dave = _Person(server, new_person(server, plan="roomy"))
        dave.ask("dave")
        dave_again = dave.regenerate("dave", TERSE_MODEL)
        dave.rate(dave.answer["dave"], 1)
        dave.rate(dave_again, -1)

        exported = datetime.now(UTC)
        copies = {kind: _keyed(kind, _export(made, kind, tmp_path / f"{kind}-0")) for kind in KINDS}
        assert dave.answer["dave"] not in copies["sft"]

        def change(step: int) -> None:
            if step == 1:
                pat.rate(pat.answer["down"], -1)
                corrected = pat.web.api(
                    "POST",
                    f"/messages/{pat.answer['corrected']}/correction",
                    json={"content": "The Inchkeith lighthouse guards the Firth of Forth."},
                )
                assert corrected.status_code == 201, corrected.text
                pat.judge(worse, "worse")
                vote = {"winner": "both_bad"}
                voted = pat.web.api("PUT", f"/comparisons/{comparison['id']}/vote", json=vote)
                assert voted.is_success, voted.text
                assert pat.ask_over_the_api("twice", temperature=0) == "stop"  # the same again
                pat.regenerate("moved", FAILING)  # the branch shown ends on an error now
                pat.follow("continued")
                pat.regenerate("left", TERSE_MODEL)  # asked again, and left without a word
                dave.consent()
            else:  # labels taken back or turned round
                pat.rate(pat.answer["down"], None)
                pat.judge(worse, "better")
                pat.rate(cut, 1)  # a thumbs-up on an answer cut short: no KTO row
                pat.regenerate("corrected", TERSE_MODEL)  # the branch shown moves again
                pat.follow("left")  # gone back to the first answer: a demonstration again

        for step in (1, 2):
            change(step)
            since, exported = exported.isoformat(), datetime.now(UTC)
            withdrawn: dict[str, list[dict[str, Any]]] = {}
            for kind in KINDS:
                out = tmp_path / f"{kind}-{step}-since"
                later = _export(made, kind, out, "--since", since)
                now = _keyed(kind, _export(made, kind, tmp_path / f"{kind}-{step}"))
                assert now != copies[kind], (kind, step)  # something did change
                copies[kind] = _applied(kind, copies[kind], later, out)
                assert copies[kind] == now, (kind, step)
                withdrawn[kind] = _withdrawn(out)
                counted = f"since: {len(withdrawn[kind])}"
                assert counted in later["card"], later["card"]
            if step == 1:
                for answer, why in (
                    (pat.answer["down"], "rated_down"),
                    (down_more, "bad_context"),
                    (pat.answer["corrected"], "corrected"),
                    (worse, "rejected"),
                    (comparison["a_id"], "voted_both_bad"),
                    (comparison["b_id"], "voted_both_bad"),
                    (pat.answer["left"], "regenerated"),
                ):
                    assert {"message_id": answer, "withdrawn": why} in withdrawn["sft"]
                moved = {"conversation_id": pat.conversation["moved"]}
                assert moved | {"withdrawn": "conversation_changed"} in withdrawn["conversations"]
                assert dave.answer["dave"] in copies["sft"] and dave_again in copies["kto"]
                assert pat.answer["left"] not in copies["sft"]
            else:
                assert {"message_id": cut, "withdrawn": "truncated"} in withdrawn["kto"]
                assert pat.answer["left"] in copies["sft"]
        pat.close()
        dave.close()
        server.close_clients()


LEFT = {
    "asked": "Which keeper first lit the lamp at the Eddystone lighthouse",
    "cut": "Describe the sound of a foghorn on a winter night at sea",
    "back": "Why were lighthouse lanterns glazed with diamond-shaped panes",
    "deleted": "What did keepers burn in their lamps before paraffin arrived",
}


def test_an_answer_is_left_only_for_a_better_one_the_person_kept(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The "regenerated" rule, where it is easy to read the person the wrong way round: a
    verdict asked for and not given keeps nothing; a regeneration cut at the length limit is no
    better answer; going back to the first answer keeps it and leaves the other; an answer
    deleted over the API gives the one left for it back, and incremental exports follow."""
    data_dir = tmp_path_factory.mktemp("left")
    config = data_dir / "asked.toml"
    config.write_text(ROOMY_PLAN + "\n[flywheel]\nverdict_rate = 1.0\n")
    made = Store(data_dir)
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    with LiveServer(settings, _backends) as server:
        pat = _Person(server, new_person(server, plan="roomy"))
        pat.consent()
        answers: dict[str, list[str]] = {}
        for name in ("asked", "back"):
            first = _done(pat.web.chat(content=LEFT[name], model=SCRIPTED))["id"]
            conversation = pat.web.api("GET", "/conversations").json()["data"][0]["id"]
            question = pat.web.tree(conversation)["messages"][0]["id"]
            again = pat.web.chat(
                conversation_id=conversation, parent_id=question, model=TERSE_MODEL
            )
            done = next(payload for event, payload in again if event == "done")
            assert done["ask_verdict"] is True  # asked "better, worse or the same?", not answered
            answers[name] = [first, _done(again)["id"]]
            if name == "back":  # the person goes back to the first answer
                moved = pat.web.api(
                    "PATCH", f"/conversations/{conversation}", json={"current_leaf_id": first}
                )
                assert moved.is_success, moved.text
        cut = [{"role": "user", "content": LEFT["cut"]}]
        whole = pat.client.chat.completions.create(model=SCRIPTED, messages=cut)
        short = pat.client.chat.completions.create(model=SCRIPTED, messages=cut, max_tokens=3)
        assert short.choices[0].finish_reason == "length"
        deleted = [{"role": "user", "content": LEFT["deleted"]}]
        kept = pat.client.chat.completions.create(model=SCRIPTED, messages=deleted)
        later = pat.client.chat.completions.create(model=TERSE_MODEL, messages=deleted)

        exported = datetime.now(UTC)
        copy = _keyed("sft", _export(made, "sft", tmp_path / "full"))

        def uid(completion_id: str) -> str:
            return str(uuid.UUID(completion_id.removeprefix("chatcmpl-")))

        assert answers["asked"][0] not in copy and answers["asked"][1] in copy
        assert answers["back"][0] in copy and answers["back"][1] not in copy
        assert uid(whole.id) in copy and uid(short.id) not in copy
        assert uid(kept.id) not in copy and uid(later.id) in copy

        pat.client.chat.completions.delete(later.id)
        out = tmp_path / "since"
        since = _export(made, "sft", out, "--since", exported.isoformat())
        fresh = _keyed("sft", _export(made, "sft", tmp_path / "fresh"))
        assert uid(kept.id) in fresh  # left for an answer that is gone: a demonstration again
        assert _applied("sft", copy, since, out) == fresh
        pat.close()
        server.close_clients()
