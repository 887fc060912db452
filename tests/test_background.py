"""Background responses through the official SDK: created at once and generated with nobody
reading, polled with ``retrieve``, stopped with ``cancel`` (the backend's generation with it);
what was generated is kept and charged.

The backend is a real HTTP server on 127.0.0.1 speaking OpenAI's streaming protocol: one
question it answers at once, another it begins and then holds, so that a cancel always finds
the generation running."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.conftest import LiveServer
from tests.fleet import REDIS_URL, needs_redis
from tests.test_router import ANSWER, delta, sse
from tests.test_streams import wait_until
from tests.upstream_server import gateway_over, serve_in_thread

MODEL = "slow-model"
HOLD = "Write the longest story you can."


class Backstage:
    """What the backend saw: a held generation begun, and its connection closed."""

    def __init__(self) -> None:
        self.begun = threading.Event()
        self.closed = threading.Event()


@pytest.fixture
def upstream() -> Iterator[tuple[str, Backstage]]:
    """The backend (its base URL) and what it saw."""
    seen = Backstage()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/v1/chat/completions":
            return web.json_response({"object": "list", "data": []})
        body = await request.json()
        if body["messages"][-1]["content"] != HOLD:
            return web.Response(body=ANSWER, content_type="text/event-stream")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(delta("Once")))
        seen.begun.set()
        try:
            await asyncio.Event().wait()  # held until the gateway hangs up
        finally:
            seen.closed.set()
        return response

    with serve_in_thread(handle) as server:
        yield server.url + "/v1", seen


@pytest.fixture
def gateway(
    upstream: tuple[str, Backstage], tmp_path: Path
) -> Iterator[tuple[LiveServer, Backstage]]:
    url, seen = upstream
    with gateway_over(url, (MODEL,), tmp_path / "gateway") as live:
        yield live, seen


def test_a_background_response_is_answered_at_once_and_polled(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    made = client.responses.create(model=MODEL, input="Say hello.", background=True)
    assert made.background is True and made.status in ("queued", "in_progress")

    def finished() -> Any:
        found = client.responses.retrieve(made.id)
        return found if found.status == "completed" else None

    done = wait_until(finished)
    assert done.output_text == "Hello" and done.background is True
    assert done.usage is not None and done.usage.output_tokens == 3


def test_a_background_response_can_be_polled_the_moment_its_id_is_given(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    """The answer is stored before the id is given out: with the store's writer held up, the
    create waits for it, and a poll right after never finds nothing."""
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])

    async def admitted(services: Any) -> int:
        return sum(pool.in_use for pool in services.chat.admission.pools.values())

    def create_then_poll() -> Any:
        made = client.responses.create(model=MODEL, input="Say hello.", background=True)
        return client.responses.retrieve(made.id)

    with ThreadPoolExecutor(1) as pool:
        with live.writer_held():
            polled = pool.submit(create_then_poll)
            wait_until(lambda: live.call(admitted) == 1)  # admitted; its write waits its turn
        assert polled.result(timeout=20).status in ("in_progress", "completed")


def test_a_cancelled_background_response_stops_its_backend_and_keeps_what_it_made(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    live, seen = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    made = client.responses.create(model=MODEL, input=HOLD, background=True)
    assert seen.begun.wait(10)
    stranger = live.client(live.new_user(plan="roomy")[1])
    with pytest.raises(openai.NotFoundError):
        stranger.responses.cancel(made.id)

    cancelled = client.responses.cancel(made.id)
    assert cancelled.status == "cancelled"
    assert seen.closed.wait(10)  # the backend's generation was stopped too
    again = client.responses.retrieve(made.id)
    assert again.status == "cancelled" and again.output_text == cancelled.output_text
    assert again.output_text in ("", "Once")  # what arrived before the cancel, no more
    assert client.responses.cancel(made.id).status == "cancelled"  # said twice, the same


def test_a_background_response_is_stored(gateway: tuple[LiveServer, Backstage]) -> None:
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="hi", background=True, store=False)
    assert refused.value.param == "store"


@pytest.fixture
def replicas(
    upstream: tuple[str, Backstage], postgres_url: str, tmp_path: Path
) -> Iterator[tuple[LiveServer, LiveServer, Backstage]]:
    """Two replicas over one PostgreSQL and one Redis, and what their backend saw."""
    url, seen = upstream
    shared = {"database_url": postgres_url, "redis_url": REDIS_URL}
    with (
        gateway_over(url, (MODEL,), tmp_path / "a", **shared) as a,
        gateway_over(url, (MODEL,), tmp_path / "b", **shared) as b,
    ):
        yield a, b, seen


@needs_redis
def test_a_cancel_reaches_the_replica_that_runs_the_response(
    replicas: tuple[LiveServer, LiveServer, Backstage],
) -> None:
    """The response runs on the first replica, the cancel lands on the second, which tells
    the first through the bulletin."""
    a, b, seen = replicas
    _, key = a.new_user(plan="roomy")
    made = a.client(key).responses.create(model=MODEL, input=HOLD, background=True)
    assert seen.begun.wait(10)
    cancelled = b.client(key).responses.cancel(made.id)
    assert cancelled.status == "cancelled"
    assert seen.closed.wait(10)
    assert a.client(key).responses.retrieve(made.id).status == "cancelled"


@needs_redis
def test_a_background_stream_left_on_one_replica_is_read_on_to_its_end_on_another(
    replicas: tuple[LiveServer, LiveServer, Backstage],
) -> None:
    """The reader of a background response streamed by the first replica leaves; it reads on
    from the second (from the store, which the first checkpoints), and when the response is
    cancelled there the stream ends with what was written, once, and the last event."""
    a, b, seen = replicas
    _, key = a.new_user(plan="roomy")
    with a.client(key).responses.stream(model=MODEL, input=HOLD, background=True) as first:
        created = next(iter(first))
        assert seen.begun.wait(10)
    response = created.response.id
    assert not seen.closed.is_set()  # its reader left; the answer goes on

    reading_on = threading.Event()

    def read_on() -> list[Any]:
        with b.client(key).responses.stream(
            response_id=response, starting_after=created.sequence_number
        ) as again:
            reading_on.set()
            return list(again)

    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_on)
        try:
            assert reading_on.wait(20)  # b has read it in progress, and follows it
            assert not reading.done()
        finally:
            cancelled = b.client(key).responses.cancel(response)
        events = reading.result(timeout=20)
    assert cancelled.status == "cancelled" and cancelled.output_text == "Once"
    said = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert said == "Once"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    assert seen.closed.wait(10)
