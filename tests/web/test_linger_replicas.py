"""A web chat's answer across replicas: a page that reads the chat on another replica keeps an
answer going whose own page went away, and Stop sent to another replica reaches it (through the
Redis bulletin). Apart from the browser tests of test_linger.py: a module whose browser is open
has an event loop running, in which the PostgreSQL fixture cannot start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lamplighter import chat
from tests.fleet import REDIS_URL, needs_redis
from tests.test_background import HOLD, Backstage, upstream  # noqa: F401 (a fixture)
from tests.test_background import MODEL as HELD
from tests.upstream_server import gateway_over
from tests.web.conftest import Browserless, new_person
from tests.web.test_linger import asking


@needs_redis
def test_a_page_on_another_replica_keeps_an_answer_going_and_stop_reaches_it(
    upstream: tuple[str, Backstage],  # noqa: F811 (the fixture)
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two replicas over one PostgreSQL and one Redis, in front of a backend that holds its
    answer until it is hung up on: an answer left by its page on the first replica goes on
    while a page reads the chat on the second (told through the bulletin), is cut once nobody
    does, and Stop sent to the second cuts one that runs on the first."""
    monkeypatch.setattr(chat, "LINGER_S", 1.0)
    monkeypatch.setattr(chat, "LINGER_WATCHED_S", 1.0)
    url, seen = upstream
    shared = {"database_url": postgres_url, "redis_url": REDIS_URL}
    with (
        gateway_over(url, (HELD,), tmp_path / "a", **shared) as a,
        gateway_over(url, (HELD,), tmp_path / "b", **shared) as b,
    ):
        person = new_person(a)
        on_a, on_b = Browserless(a.base_url), Browserless(b.base_url)
        on_a.login(person)
        on_b.login(person)
        with asking(on_a, HOLD, model=HELD) as events:
            start = next(data for name, data in events if name == "start")
            next(data for name, data in events if name == "delta")
        conversation = start["conversation_id"]
        # Three times as long as an answer nobody watches lasts (1 s here, and 1 s past a look).
        watched_until = time.monotonic() + 3 * chat.LINGER_S
        while time.monotonic() < watched_until:
            assert on_b.tree(conversation)["messages"][-1]["status"] == "in_progress"
            assert not seen.closed.is_set()
        assert seen.closed.wait(10)  # nobody reads it any more: cut, the backend hung up on

        seen.begun.clear()
        seen.closed.clear()
        with asking(on_a, HOLD, model=HELD) as events:
            answer = next(data for name, data in events if name == "start")["message"]["id"]
            assert seen.begun.wait(10)
            stopped = on_b.api("POST", f"/messages/{answer}/stop")
            assert stopped.json() == {"id": answer, "stopped": True}
            assert seen.closed.wait(10)
        on_a.close()
        on_b.close()
