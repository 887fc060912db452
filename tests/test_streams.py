"""Streams under stress: cut short, many at once. Nothing acknowledged is lost or mixed up, and
tokens produced for a client that left are still settled."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lamplighter.chat import message_id_from
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.store.models import Message, Usage
from tests.conftest import MODEL, PACED, SCRIPTED, LiveServer

LONG = [{"role": "user", "content": "Write a very long essay about the history of lighthouses."}]


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (settling happens after the client
    has gone, so there is nothing to await from the outside)."""
    done = threading.Event()
    deadline = timeout / 0.02
    for _ in range(int(deadline)):
        value = check()
        if value:
            return value
        done.wait(0.02)
    raise AssertionError("condition not met in time")


def stored(server: LiveServer, completion_id: str) -> tuple[Message | None, Usage | None]:
    message_id = message_id_from(completion_id)

    async def load(services):  # type: ignore[no-untyped-def]
        from sqlalchemy import select

        async with services.db.transaction() as session:
            message = await session.get(Message, message_id)
            usage = (
                await session.execute(select(Usage).where(Usage.message_id == message_id))
            ).scalar_one_or_none()
            return message, usage

    result: tuple[Message | None, Usage | None] = server.call(load)
    return result


def settled(server: LiveServer, completion_id: str) -> tuple[Message, Usage] | None:
    message, usage = stored(server, completion_id)
    if message is None or usage is None or message.status == "in_progress":
        return None
    return message, usage


def read_then_hang_up(
    server: LiveServer, key: str, body: dict[str, Any], chunks: int
) -> tuple[str, str]:
    """Stream, read ``chunks`` content deltas, then drop the connection: (id, text seen)."""
    seen: list[str] = []
    completion_id = ""
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            completion_id = event["id"]
            delta = event["choices"][0]["delta"].get("content")
            if delta:
                seen.append(delta)
            if len(seen) >= chunks:
                break
    return completion_id, "".join(seen)


def test_a_cut_stream_keeps_the_partial_answer_and_settles_its_tokens(
    server: LiveServer, user: tuple[str, str]
) -> None:
    body = {"model": MODEL, "messages": LONG, "max_tokens": 1500, "temperature": 0.0}
    completion_id, seen = read_then_hang_up(server, user[1], body, chunks=8)
    message, usage = wait_until(lambda: settled(server, completion_id))
    assert message.status == "cut"
    assert message.content.startswith(seen)
    assert usage.finish_reason == "cancelled"
    # Generation stopped right after the client left (within the few tokens in flight), far
    # short of the 1500 granted.
    assert 8 <= usage.completion_tokens <= 8 + 16
    assert usage.prompt_tokens > 0
    # The model's slot is free again: the next request is served.
    again = server.client(user[1]).chat.completions.create(
        model=MODEL,
        messages=LONG,
        max_tokens=3,  # type: ignore[arg-type]
    )
    assert again.usage is not None and again.usage.completion_tokens == 3


def test_a_client_that_leaves_a_non_streamed_request_stops_its_generation(
    server: LiveServer, user: tuple[str, str]
) -> None:
    marker = uuid.uuid4().hex
    messages = [{"role": "user", "content": f"{LONG[0]['content']} ({marker})"}]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": MODEL, "messages": messages, "max_tokens": 1500, "temperature": 0.0},
            headers={"authorization": f"Bearer {user[1]}"},
            timeout=httpx.Timeout(60, read=0.5),
        )

    async def find(services):  # type: ignore[no-untyped-def]
        from sqlalchemy import select

        async with services.db.transaction() as session:
            question = (
                await session.execute(
                    select(Message).where(Message.content == messages[0]["content"])
                )
            ).scalar_one_or_none()
            if question is None:
                return None
            answer = (
                await session.execute(select(Message).where(Message.parent_id == question.id))
            ).scalar_one_or_none()
            return None if answer is None or answer.status == "in_progress" else answer

    answer = wait_until(lambda: server.call(find))
    assert answer.status == "cut"
    _, usage = stored(server, f"chatcmpl-{answer.id.hex}")
    assert usage is not None and usage.completion_tokens < 1500


async def test_many_simultaneous_streams_some_cut_lose_and_mix_nothing(
    server: LiveServer, user: tuple[str, str], scripted: ScriptedBackend
) -> None:
    key = user[1]
    markers = [uuid.uuid4().hex for _ in range(16)]

    async def one(client: httpx.AsyncClient, index: int) -> tuple[str, str, bool]:
        cut = index % 2 == 1
        # Streams to be cut are long, and paced, so that they cannot finish before the server
        # notices (unpaced, one can be written whole into the socket buffers first).
        words = 3000 if cut else 40
        body = {
            "model": PACED if cut else SCRIPTED,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"{markers[index]} " + "word " * words}],
        }
        seen: list[str] = []
        completion_id = ""
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                completion_id = event["id"]
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    seen.append(event["choices"][0]["delta"]["content"])
                if cut and len(seen) == 3:
                    break
        return completion_id, "".join(seen), cut

    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(len(markers))))

    for index, (completion_id, seen, cut) in enumerate(results):
        expected = f"You said: {markers[index]} " + "word " * (3000 if cut else 40)
        result = await asyncio.to_thread(wait_until, lambda c=completion_id: settled(server, c))
        message, usage = result
        assert markers[index] in message.content  # nothing mixed up between streams
        if cut:
            assert message.status == "cut"
            assert message.content.startswith(seen)
            assert expected.startswith(message.content)
            assert 3 <= usage.completion_tokens < 3000
        else:
            assert message.status == "complete"
            assert message.content == seen == expected
            assert usage.completion_tokens == len(expected.split(" "))
    assert await asyncio.to_thread(wait_until, lambda: scripted.active == 0 or None) is not None


async def test_simultaneous_requests_to_the_model_queue_and_all_complete(
    server: LiveServer, user: tuple[str, str]
) -> None:
    body = {"model": MODEL, "max_tokens": 8, "temperature": 0.0}

    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"authorization": f"Bearer {user[1]}"}, timeout=120
    ) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v1/chat/completions",
                    json={
                        **body,
                        "messages": [{"role": "user", "content": f"Name a colour. #{i}"}],
                    },
                )
                for i in range(6)
            )
        )
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.json()["id"] for r in responses}) == 6
    assert all(r.json()["usage"]["completion_tokens"] >= 1 for r in responses)
