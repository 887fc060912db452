"""A web chat's answer outlives its page for a while: a reload mid-answer finds it still being
written and then finished, while an answer nobody comes back for is cut soon after, and Stop
cuts at once. The real model answers, so each answer takes some seconds."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from lamplighter import chat
from lamplighter.store.models import Message, Usage
from tests.conftest import MODEL, PACED, LiveServer
from tests.test_streams import wait_until
from tests.web.browser import BODY, Tabs
from tests.web.conftest import Browserless, Person


@pytest.fixture
def web(
    server: LiveServer, person: Person, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Browserless]:
    # An answer left alone is cut a second after its page went: long enough for the test to
    # come back to it, short enough to see it cut.
    monkeypatch.setattr(chat, "LINGER_S", 1.0)
    page = Browserless(server.base_url)
    page.login(person)
    yield page
    page.close()


@contextmanager
def asking(
    web: Browserless, content: str, model: str | None = None
) -> Iterator[Iterator[tuple[str, Any]]]:
    """Ask in a chat of its own (``model``, or the plan's default): the answer's events as they
    come, (name, data); leaving the block drops the connection, as a reload does."""

    def events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
        name = ""
        for line in lines:
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield name, json.loads(line.removeprefix("data: "))

    with web.http.stream(
        "POST",
        "/api/chat",
        json={"content": content, "model": model},
        headers={"x-csrf-token": web.csrf},
    ) as response:
        yield events(response.iter_lines())


def read_then_leave(
    web: Browserless, content: str, chars: int, model: str | None = None
) -> tuple[str, str, str]:
    """Ask, read the answer until ``chars`` characters came, then drop the connection as a
    reload does: (conversation id, answer id, text seen)."""
    received, conversation, answer = "", "", ""
    with asking(web, content, model) as events:
        for name, data in events:
            if name == "start":
                conversation, answer = data["conversation_id"], data["message"]["id"]
            elif name == "delta":
                received += data["text"]
                if len(received) >= chars:
                    break
    return conversation, answer, received


def stored(server: LiveServer, answer: str) -> tuple[str, str, str | None] | None:
    """The answer as the store has it, read without looking at the chat as a page does (that
    would keep the answer going): (status, content, finish reason), once it has ended."""

    async def load(services: Any) -> tuple[str, str, str | None] | None:
        async with services.db.transaction() as session:
            row = (
                await session.execute(
                    select(Message.status, Message.content, Usage.finish_reason)
                    .join(Usage, Usage.message_id == Message.id)
                    .where(Message.id == uuid.UUID(answer))
                )
            ).first()
        return None if row is None or row[0] == "in_progress" else (row[0], row[1], row[2])

    result: tuple[str, str, str | None] | None = server.call(load)
    return result


def left(server: LiveServer, outcome: str) -> float:
    """lamplighter_web_answers_left_total for ``outcome``, as /metrics has it."""
    text = httpx.get(server.base_url + "/metrics").text
    line = f'lamplighter_web_answers_left_total{{outcome="{outcome}"}} '
    found = [float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)]
    return found[0] if found else 0.0


def queued(server: LiveServer) -> int:
    """Requests waiting for the embedded model's one slot."""

    async def count(services: Any) -> int:
        return sum(pool.queued for pool in services.chat.admission.pools.values())

    result: int = server.call(count)
    return result


def test_a_reloaded_page_finds_its_answer_finished(server: LiveServer, web: Browserless) -> None:
    finished_before = left(server, "finished")
    # An echo of 300 words, a word every 2 ms: it goes on well after the page left.
    conversation, answer, seen = read_then_leave(web, "word " * 300, chars=3, model=PACED)

    def finished() -> dict[str, Any] | None:
        # The reloaded page reads the chat again and again while the answer is written.
        shown = next(m for m in web.tree(conversation)["messages"] if m["id"] == answer)
        return None if shown["status"] == "in_progress" else shown

    shown = wait_until(finished, timeout=60)
    assert shown["status"] == "complete"
    assert shown["content"].startswith(seen) and len(shown["content"]) > len(seen)
    assert left(server, "finished") == finished_before + 1


def test_an_answer_nobody_comes_back_for_is_cut(
    server: LiveServer, web: Browserless, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time to come back at all: a second could be enough for the model to finish its story.
    monkeypatch.setattr(chat, "LINGER_S", 0.0)
    cut_before = left(server, "cut")
    _, answer, seen = read_then_leave(web, "Write a long story about a lighthouse.", chars=3)
    status, content, finish_reason = wait_until(lambda: stored(server, answer), timeout=60)
    assert (status, finish_reason) == ("cut", "cancelled")
    assert content.startswith(seen)
    assert wait_until(lambda: left(server, "cut") == cut_before + 1)


def test_stop_cuts_the_answer_at_once(server: LiveServer, web: Browserless) -> None:
    answer, stopped, done = "", False, None
    with asking(web, "Write a long story about a lighthouse.") as events:
        for name, data in events:
            if name == "start":
                answer = data["message"]["id"]
            elif name == "delta" and not stopped:
                response = web.api("POST", f"/messages/{answer}/stop")
                assert response.status_code == 200, response.text
                assert response.json() == {"id": answer, "stopped": True}
                stopped = True
            elif name == "done":
                done = data["message"]
    # The stream itself ended, with the answer as the stop left it (a page that only left would
    # have kept it going for a second).
    assert done is not None and done["status"] == "cut" and done["finish_reason"] == "cancelled"
    assert stored(server, answer) == ("cut", done["content"], "cancelled")


def test_an_answer_whose_page_left_gives_its_slot_to_someone_waiting(
    server: LiveServer, web: Browserless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded model writes one answer at a time: with a request queued for it, an answer
    whose page went away is cut at once rather than kept for a page that may come back."""
    monkeypatch.setattr(chat, "LINGER_S", 120.0)
    yielded_before = left(server, "yielded")
    _, key = server.new_user(plan="roomy")
    client = server.client(key)
    waiting: list[str] = []
    with asking(web, "Write a long story about a lighthouse.") as events:
        answer_id = next(data for name, data in events if name == "start")["message"]["id"]
        asker = threading.Thread(
            target=lambda: waiting.append(
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
                ).id
            )
        )
        asker.start()
        wait_until(lambda: queued(server) == 1)
    asker.join(timeout=60)
    assert waiting, "the waiting request was not served"
    status, _, finish_reason = wait_until(lambda: stored(server, answer_id))
    assert (status, finish_reason) == ("cut", "cancelled")
    assert left(server, "yielded") == yielded_before + 1


def test_a_page_reloaded_mid_answer_shows_the_answer_written_to_its_end(
    tabs: Tabs, person: Person
) -> None:
    """In Chromium: the reloaded page shows the answer as it goes on, then whole; it showed it
    cut, "Stopped", though nobody had pressed Stop."""
    tab = tabs.open()
    tab.login(person)
    tab.pick_model(PACED)  # an echo of 1,500 words, a word every 2 ms: 3 s at least
    tab.send("word " * 1500)
    expect(tab.answers().last.locator(BODY)).not_to_be_empty()  # it is being written
    seen = tab.answers().last.locator(BODY).inner_text()
    tab.reload()
    answer = tab.answers().last
    expect(answer).to_have_attribute("data-status", "complete", timeout=90_000)
    expect(answer).not_to_contain_text("Stopped")
    assert len(answer.locator(BODY).inner_text()) > len(seen)
