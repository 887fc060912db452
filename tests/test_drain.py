"""Graceful shutdown, in order: readiness off at once, new requests still served for the grace,
then refused with 503 and retry-after; running answers finish; at the deadline the rest end with
a last chunk, their usage and an explanation, and every token is settled in the usage ledger."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from lamplighter.drain import GracefulServer
from lamplighter.engines.base import Backend, Chunk, GenerationRequest, PreparedRequest, grant
from lamplighter.settings import Settings
from lamplighter.store.database import Database
from lamplighter.store.models import Message, Usage
from tests.conftest import ROOMY_PLAN, LiveServer, make_settings


class HeldBackend:
    """Says "one two" at once; asked "hold NAME", it then waits until the test releases NAME
    (forever if it never does) before it says " three" and stops."""

    def __init__(self, model: str, capacity: int) -> None:
        self.name = model
        self.model = model
        self.capacity = capacity
        self.ready = True
        self.gates: dict[str, asyncio.Event] = {}
        self.holding: set[str] = set()

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model,)

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        prompt = sum(len(turn.content.split()) + 1 for turn in request.turns)
        return PreparedRequest(request, prompt, grant(request, prompt, 4096))

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        question = prepared.request.turns[-1].content
        yield Chunk("one")
        yield Chunk(" two")
        if question.startswith("hold "):
            name = question.removeprefix("hold ")
            self.holding.add(name)
            try:
                await self.gates.setdefault(name, asyncio.Event()).wait()
            finally:
                self.holding.discard(name)
        yield Chunk(" three")
        yield Chunk("", tokens=0, finish_reason="stop")

    def release(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()

    async def close(self) -> None:
        self.ready = False


class StoppableServer(LiveServer):
    """Lamplighter under the server `lamplighter serve` runs, with signals sent by hand."""

    def __init__(self, settings: Settings, *backends: HeldBackend) -> None:
        async def made(_: Settings) -> list[Backend]:
            return list(backends)

        super().__init__(settings, made)
        self.server = GracefulServer(self.server.config, self.app.state.drain)

    def signal(self, sig: signal.Signals) -> None:
        self.server.handle_exit(sig, None)  # what the signal handler does

    @property
    def phase(self) -> str:
        phase: str = self.app.state.drain.phase
        return phase


def within(seconds: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


def ask(server: LiveServer, key: str, model: str, question: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": question}], **extra},
        timeout=30,
    )


def stream(server: LiveServer, key: str, model: str, question: str) -> list[Any]:
    """Every event of a streamed answer, as JSON ("[DONE]" as the string)."""
    events: list[Any] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def ledger(settings: Settings) -> list[tuple[int, int, str, str]]:
    """Every usage row once the server is down: (prompt tokens, completion tokens, finish
    reason, the stored answer's status)."""

    async def read() -> list[tuple[int, int, str, str]]:
        db = Database(settings.resolved_database_url)
        try:
            async with db.transaction() as session:
                rows = await session.execute(
                    select(
                        Usage.prompt_tokens, Usage.completion_tokens, Usage.finish_reason,
                        Message.status,
                    ).join(Message, Message.id == Usage.message_id)
                )  # fmt: skip
                return sorted((a, b, c, d) for a, b, c, d in rows.all())
        finally:
            await db.close()

    return asyncio.run(read())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = tmp_path / "lamplighter.toml"
    config.write_text(ROOMY_PLAN)
    return make_settings(tmp_path, config=config, shutdown_timeout=6, drain_grace=2)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def test_sigterm_drains_in_order_and_settles_every_answer(
    settings: Settings, pool: ThreadPoolExecutor
) -> None:
    wide, narrow = HeldBackend("held", capacity=4), HeldBackend("narrow", capacity=1)
    with StoppableServer(settings, wide, narrow) as server:
        _, key = server.new_user(plan="roomy")
        finishing = pool.submit(stream, server, key, "held", "hold a")
        cut_stream = pool.submit(stream, server, key, "held", "hold forever")
        cut_plain = pool.submit(ask, server, key, "narrow", "hold n")
        within(10, lambda: {"a", "forever"} <= wide.holding and "n" in narrow.holding)
        queued = pool.submit(ask, server, key, "narrow", "a question that waits for a slot")
        within(10, lambda: server.call(_queued("narrow")) == 1)
        stopped_at = time.monotonic()

        server.signal(signal.SIGTERM)
        ready = httpx.get(f"{server.base_url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        # Within the grace a request that still arrives is served, on a closing connection.
        during = ask(server, key, "held", "short")
        assert during.status_code == 200, during.text
        assert during.headers["connection"] == "close"
        within(10, lambda: server.phase == "refusing")
        assert time.monotonic() - stopped_at >= 2 - 0.05  # not before the grace is over
        after = ask(server, key, "held", "short")
        assert after.status_code == 503
        assert after.headers["retry-after"] == "1"
        assert after.json()["error"]["code"] == "server_shutting_down"
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200  # probes still answer

        server.loop.call_soon_threadsafe(wide.release, "a")
        finished = finishing.result(timeout=10)
        assert streamed_text(finished) == "one two three"
        assert finished[-2]["usage"]["completion_tokens"] == 3 and finished[-1] == "[DONE]"
        assert server.phase == "refusing"  # two answers still run: no cut before the deadline

        # The deadline: what still streams ends with a last chunk, its usage, why, and [DONE].
        cut = cut_stream.result(timeout=15)
        assert time.monotonic() - stopped_at >= 6 - 0.05
        assert streamed_text(cut) == "one two"
        assert cut[-4]["choices"][0]["finish_reason"] == "length"
        assert cut[-3]["usage"]["completion_tokens"] == 2
        assert cut[-2]["error"]["code"] == "server_shutting_down"
        assert cut[-1] == "[DONE]"
        plain = cut_plain.result(timeout=5)
        assert plain.status_code == 200
        assert plain.json()["choices"][0]["message"]["content"] == "one two"
        assert plain.json()["choices"][0]["finish_reason"] == "length"
        assert "stopped" in plain.headers["x-lamplighter-warning"]
        refused = queued.result(timeout=5)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_shutting_down"
        server.thread.join(timeout=15)
        assert not server.thread.is_alive(), "the server did not exit after the drain"
        drain = server.app.state.drain
        assert (drain.phase, drain.cut, drain.refused) == ("stopped", 2, 1)

    # Every answer a client received is in the ledger, with exactly the usage it was told.
    told = [
        (during.json()["usage"], "stop", "complete"),
        (finished[-2]["usage"], "stop", "complete"),
        (cut[-3]["usage"], "shutdown", "cut"),
        (plain.json()["usage"], "shutdown", "cut"),
    ]
    expected = sorted((u["prompt_tokens"], u["completion_tokens"], f, st) for u, f, st in told)
    assert ledger(settings) == expected  # and no row for the two refused requests


def test_ctrl_c_skips_the_grace_and_a_second_one_cuts_at_once(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text(ROOMY_PLAN)
    settings = make_settings(tmp_path, config=config, shutdown_timeout=60, drain_grace=30)
    backend = HeldBackend("held", capacity=2)
    with StoppableServer(settings, backend) as server:
        _, key = server.new_user(plan="roomy")
        held = pool.submit(stream, server, key, "held", "hold forever")
        within(10, lambda: "forever" in backend.holding)
        started = time.monotonic()
        server.signal(signal.SIGINT)
        within(5, lambda: server.phase == "refusing")  # no grace for a terminal
        assert ask(server, key, "held", "short").status_code == 503
        server.signal(signal.SIGINT)  # don't wait for the answers
        events = held.result(timeout=10)
        assert events[-2]["error"]["code"] == "server_shutting_down" and events[-1] == "[DONE]"
        server.thread.join(timeout=10)
        assert not server.thread.is_alive()
        assert time.monotonic() - started < 10  # far from the 60 s timeout
    assert [row[1:] for row in ledger(settings)] == [(2, "shutdown", "cut")]


def _queued(pool: str) -> Callable[[Any], Any]:
    async def count(services: Any) -> int:
        found = services.chat.admission.pools.get(pool)
        return 0 if found is None else int(found.queued)

    return count
