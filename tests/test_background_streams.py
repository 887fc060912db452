"""Background responses streamed, through the official SDK: the answer goes on when its reader
leaves, and a reader that comes back (``responses.stream(response_id=..., starting_after=n)``,
or ``retrieve(..., stream=True, starting_after=n)``) gets exactly the text it had not seen,
from the store while the answer is still generated and after it ended.

The backend is a real HTTP server on 127.0.0.1 speaking OpenAI's streaming protocol: it sends
the first words of its story, then holds the rest until the test lets it go, so that a reader
always leaves, and comes back, while the answer is being written."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter import chat
from lamplighter.api.openai_responses import (
    LONGEST_DELTA,
    _delta_ends,
    _Resumable,
    _Shape,
    _Stored,
)
from lamplighter.chat import ChatService, TokenCount
from tests.conftest import LiveServer
from tests.test_router import delta, sse
from tests.upstream_server import gateway_over, serve_in_thread

MODEL = "story-model"
FIRST = ["Once", " upon", " a", " time"]
REST = [" there", " was", " a", " lamplighter", " who", " lit", " every", " lamp", "."]
STORY = "".join(FIRST + REST)


class Backstage:
    """The test's hold on the backend: ``go`` lets it send the rest of the story."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.closed_early = threading.Event()  # its connection was closed before the end


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[LiveServer, Backstage]]:
    backstage = Backstage()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/v1/chat/completions":
            return web.json_response({"object": "list", "data": []})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        finished = False
        try:
            for word in FIRST:
                await response.write(sse(delta(word)))
            while not backstage.go.is_set():
                await asyncio.get_running_loop().run_in_executor(None, backstage.go.wait, 0.2)
            for word in REST:
                await response.write(sse(delta(word)))
            usage = {"prompt_tokens": 7, "completion_tokens": len(FIRST + REST)}
            await response.write(sse(delta("", "stop"), {"choices": [], "usage": usage}, "[DONE]"))
            finished = True
        finally:
            if not finished:
                backstage.closed_early.set()
        return response

    with (
        serve_in_thread(handle) as server,
        gateway_over(server.url + "/v1", (MODEL,), tmp_path / "gateway") as live,
    ):
        yield live, backstage
        backstage.go.set()  # a held generation must not outlive the test's server


def _deltas(events: list[Any]) -> str:
    return "".join(event.delta for event in events if event.type == "response.output_text.delta")


def test_a_background_stream_left_and_resumed_gives_the_rest_exactly(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    live, backstage = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    seen: list[Any] = []
    with client.responses.stream(model=MODEL, input="A story, please.", background=True) as first:
        for event in first:
            seen.append(event)
            if _deltas(seen).startswith("Once upon"):
                break  # the reader leaves, mid-answer
    response_id = seen[0].response.id
    numbers = [event.sequence_number for event in seen]
    assert numbers == sorted(set(numbers))
    assert client.responses.retrieve(response_id).status == "in_progress"  # it goes on

    # Back while the backend still holds the rest (the stream has begun once the SDK has its
    # headers: the answer was read in progress): what is stored, then what comes.
    with client.responses.stream(response_id=response_id, starting_after=numbers[-1]) as again:
        backstage.go.set()
        resumed = list(again)
        final = again.get_final_response()
    assert _deltas(seen) + _deltas(resumed) == STORY
    assert min(event.sequence_number for event in resumed) > numbers[-1]
    assert resumed[-1].type == "response.completed"
    assert final.status == "completed" and final.output_text == STORY
    assert final.usage is not None and final.usage.output_tokens == len(FIRST + REST)
    assert not backstage.closed_early.is_set()  # the backend was never cut off


def test_read_again_on_the_replica_that_writes_it_the_answer_comes_as_it_is_generated(
    gateway: tuple[LiveServer, Backstage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at the store's checkpoints (here never: a checkpoint an hour apart), which a reader
    on another replica has to wait for: the words the backend has sent come at once."""
    monkeypatch.setattr(chat, "CHECKPOINT_SECONDS", 3600.0)
    live, backstage = gateway
    client = live.client(live.new_user(plan="roomy")[1]).with_options(timeout=10)
    with client.responses.stream(model=MODEL, input="A story, please.", background=True) as first:
        created = next(iter(first))  # the reader leaves at once
    again = client.responses.retrieve(created.response.id, stream=True)
    seen: list[Any] = []
    for event in again:  # a read timeout (no event in 10 s) fails the test
        seen.append(event)
        if _deltas(seen) == "Once upon a ":  # all the backend sent ("time" may go on)
            break
    backstage.go.set()
    rest = list(again)
    assert _deltas(seen) + _deltas(rest) == STORY
    assert rest[-1].type == "response.completed"


def _listed(events: Any) -> list[tuple[int, str, str | None]]:
    return [(event.sequence_number, event.type, getattr(event, "delta", None)) for event in events]


def test_a_finished_response_streams_again_as_it_streamed_the_first_time(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    """Every event has the number it had: a reader that saw up to any of them and asks for
    the rest, through the SDK's stream or ``retrieve``, gets the text after it, once."""
    live, backstage = gateway
    backstage.go.set()
    client = live.client(live.new_user(plan="roomy")[1])
    with client.responses.stream(model=MODEL, input="A story.", background=True) as stream:
        events = list(stream)
    first = _listed(events)
    response_id = events[0].response.id
    assert [kind for _, kind, _ in first[-4:]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert _deltas(events) == STORY
    with client.responses.stream(response_id=response_id) as again:
        assert _listed(again) == first
    for number, kind, _ in first:
        if kind != "response.output_text.delta":
            continue
        said = "".join(text or "" for n, _, text in first if n <= number)
        raw = client.responses.retrieve(response_id, stream=True, starting_after=number)
        rest = list(raw)
        assert all(event.sequence_number > number for event in rest)
        assert said + _deltas(rest) == STORY, number
        assert rest[-1].type == "response.completed"


def test_what_a_background_stream_cannot_do_is_refused_by_name(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    live, backstage = gateway
    backstage.go.set()
    client = live.client(live.new_user(plan="roomy")[1])
    tool = {"type": "function", "name": "lamp", "parameters": {"type": "object"}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="hi", background=True, stream=True, tools=[tool])
    assert refused.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=MODEL,
            input="hi",
            background=True,
            stream=True,
            include=["message.output_text.logprobs"],
        )
    assert refused.value.param == "top_logprobs"
    made = client.responses.create(model=MODEL, input="A story.")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.retrieve(made.id, starting_after=3)
    assert refused.value.param == "starting_after"
    stranger = live.client(live.new_user(plan="roomy")[1])
    with pytest.raises(openai.NotFoundError):
        list(stranger.responses.retrieve(made.id, stream=True))


def _leave_then_read_on(client: openai.OpenAI) -> tuple[str, Future[list[Any]]]:
    """A background stream left after its first event, and a reader reading it again from the
    start in a thread (once it has begun: the answer was read in progress)."""
    with client.responses.stream(model=MODEL, input="A story.", background=True) as first:
        created = next(iter(first))
    began = threading.Event()

    def read_on() -> list[Any]:
        events = []
        raw = client.responses.retrieve(created.response.id, stream=True)
        began.set()
        for event in raw:
            events.append(event)
        return events

    reading = ThreadPoolExecutor(1).submit(read_on)
    assert began.wait(20)
    return created.response.id, reading


def test_a_response_deleted_while_it_is_streamed_again_ends_the_stream_with_an_error_event(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    """Its reader is told, in the stream, not cut off (it was an unhandled error)."""
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    response, reading = _leave_then_read_on(client)
    client.responses.delete(response)
    events = reading.result(timeout=20)  # no transport error
    last = events[-1]
    # The delete stops the answer, then deletes it: the reader sees one or the other last.
    assert (last.type, getattr(last, "code", None)) in (
        ("error", "not_found"),
        ("response.incomplete", None),
    )


def test_an_answer_that_cannot_be_stored_at_its_end_still_ends_its_live_stream(
    gateway: tuple[LiveServer, Backstage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refusing the answer's last write (a database failure; a NUL character on
    PostgreSQL once) left the live reader waiting for ever: it ends ``failed``, with the text."""
    live, backstage = gateway
    client = live.client(live.new_user(plan="roomy")[1])

    async def refused(*_: Any) -> None:
        raise RuntimeError("the database refused the write")

    monkeypatch.setattr(ChatService, "_finish", refused)
    with client.responses.stream(model=MODEL, input="A story.", background=True) as stream:
        backstage.go.set()
        events = list(stream)
    assert events[-1].type == "response.failed"
    assert _deltas(events) == STORY == events[-1].response.output_text


def test_a_reader_who_saw_text_the_store_lost_is_still_told_how_it_ended() -> None:
    """Its replica died between two checkpoints: the answer was settled with less text than
    the reader saw, so the numbers of the text's end are ones it has; the closing events are
    numbered past any text, and reach it."""
    stored = _Stored(uuid.uuid4(), 0, MODEL, "Once upon", TokenCount(7, 2), "interrupted")
    shape = _Shape(stored, None)
    failed = shape.response("failed", {"code": "server_error", "message": "cut"})
    saw = _Resumable.HEAD + len("Once upon a time there")
    frames = _Resumable(shape, saw).end("Once upon", failed)
    kinds = [frame.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for frame in frames]
    assert kinds == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(["a", "b", " ", "\n", "é", "語", "😀", "-", "\t"]), max_size=300
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
)
def test_deltas_end_where_they_would_whenever_the_text_is_read(text: str, cuts: list[int]) -> None:
    """However the text arrived (any checkpoints, in order), the deltas sent end where one
    reading of the finished text puts them: a reader resuming from any of them skips exactly
    what it saw."""
    sent, ends = 0, []
    for cut in sorted({min(cut, len(text)) for cut in cuts}):
        found = _delta_ends(text[:cut], sent, final=False)
        ends += found
        sent = found[-1] if found else sent
    ends += _delta_ends(text, sent, final=True)
    assert ends == _delta_ends(text, 0, final=True)
    pieces = [text[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    assert "".join(pieces) == text
    assert all(0 < len(piece) <= LONGEST_DELTA for piece in pieces)
