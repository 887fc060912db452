"""OpenAI's Responses API through the real ``openai`` SDK: whole and streamed answers, a
conversation continued with ``previous_response_id`` (and stored as one path), the token limit,
and clear refusals for what is not offered."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from lamplighter.store.conversations import Conversations
from tests.conftest import FAILING, MODEL, SCRIPTED, LiveServer
from tests.test_streams import settled, wait_until


def stored_path(server: LiveServer, response_id: str) -> list[tuple[str, str]]:
    """(role, content) from the root of the stored conversation to the answer a response is."""
    message_id = uuid.UUID(response_id.removeprefix("resp_"))

    async def path(services: Any) -> list[tuple[str, str]]:
        async with services.db.transaction() as session:
            return [(m.role, m.content) for m in await Conversations(session).path_to(message_id)]

    return server.call(path)


def test_a_whole_response(client: openai.OpenAI, server: LiveServer) -> None:
    raw = client.responses.with_raw_response.create(model=SCRIPTED, input="Hello there")
    Response.model_validate_json(raw.text)  # every field the SDK's type requires is there
    response = raw.parse()
    assert response.output_text == "You said: Hello there"
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None
    assert response.model == SCRIPTED
    [item] = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert stored_path(server, response.id) == [
        ("user", "Hello there"),
        ("assistant", "You said: Hello there"),
    ]


def test_a_streamed_response_is_the_same_answer_in_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=SCRIPTED, input="stream me", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "You said: stream me"
    done = events[-1].response  # type: ignore[union-attr]
    Response.model_validate(done.model_dump())
    assert done.output_text == "You said: stream me" and done.status == "completed"
    assert done.usage is not None and done.usage.output_tokens > 0
    assert events[0].response.id == done.id  # type: ignore[union-attr]


def test_the_sdks_stream_helper_builds_the_same_answer(client: openai.OpenAI) -> None:
    with client.responses.stream(model=SCRIPTED, input="help me stream") as stream:
        snapshots = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert snapshots[-1] == final.output_text == "You said: help me stream"
    assert len(snapshots) > 1


def test_a_backend_failing_mid_stream_ends_it_with_response_failed(
    client: openai.OpenAI,
) -> None:
    events = list(client.responses.create(model=FAILING, input="one two three four", stream=True))
    last = events[-1]
    assert last.type == "response.failed"
    failed = last.response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error"
    assert failed.output_text == "You said: one"  # what was generated before the failure
    assert "response.completed" not in [e.type for e in events]


def test_a_client_that_leaves_a_stream_stops_it_and_what_was_made_is_kept_and_charged(
    server: LiveServer, user: tuple[str, str]
) -> None:
    seen: list[str] = []
    body = {
        "model": MODEL,
        "input": "Write a very long essay about the history of lighthouses.",
        "max_output_tokens": 1500,
        "temperature": 0.0,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        server.base_url + "/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {user[1]}"},
        timeout=60,
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event["type"] == "response.created":
                    response_id = event["response"]["id"]
                elif event["type"] == "response.output_text.delta":
                    seen.append(event["delta"])
                    if len(seen) == 8:
                        break
    message, usage = wait_until(lambda: settled(server, response_id))
    assert message.status == "cut" and message.content.startswith("".join(seen))
    assert usage.finish_reason == "cancelled"
    assert 8 <= usage.completion_tokens <= 8 + 16  # stopped within the tokens in flight
    kept = server.client(user[1]).responses.retrieve(response_id)
    assert kept.status == "cancelled" and kept.output_text == message.content
    assert kept.usage is not None and kept.usage.output_tokens == usage.completion_tokens


def test_a_stored_response_can_be_retrieved_by_its_owner_only(
    client: openai.OpenAI, server: LiveServer
) -> None:
    made = client.responses.create(model=SCRIPTED, input="keep me", metadata={"a": "b"})
    again = client.responses.retrieve(made.id)
    assert (again.id, again.status, again.output_text) == (made.id, "completed", made.output_text)
    assert again.usage == made.usage
    assert again.model == SCRIPTED and again.metadata == {"a": "b"}
    stranger = server.client(server.new_user(plan="roomy")[1])
    unstored = client.responses.create(model=SCRIPTED, input="forget me", store=False)
    for who, name in [(stranger, made.id), (client, unstored.id), (client, "resp_nothing")]:
        with pytest.raises(openai.NotFoundError):
            who.responses.retrieve(name)


def test_previous_response_id_continues_the_stored_conversation(
    client: openai.OpenAI, server: LiveServer
) -> None:
    first = client.responses.create(model=SCRIPTED, input="first", instructions="Be terse.")
    second = client.responses.create(
        model=SCRIPTED, input="second", previous_response_id=first.id, instructions="Be terse."
    )
    assert second.output_text == "You said: second"
    assert second.previous_response_id == first.id
    assert second.usage and first.usage
    assert second.usage.input_tokens > first.usage.input_tokens  # the history was sent
    assert stored_path(server, second.id) == [
        ("system", "Be terse."),
        ("user", "first"),
        ("assistant", "You said: first"),
        ("user", "second"),
        ("assistant", "You said: second"),
    ]
    # Instructions are per request (OpenAI's rule): without them, or with others, the answer
    # still goes on in the same stored conversation, under the response it follows.
    plain = client.responses.create(model=SCRIPTED, input="again", previous_response_id=second.id)
    assert stored_path(server, plain.id) == [
        *stored_path(server, second.id),
        ("user", "again"),
        ("assistant", "You said: again"),
    ]
    # Several messages at once go under it too, in order; a developer message among them is
    # the caller's input, carried on (only the instructions are per request).
    several = client.responses.create(
        model=SCRIPTED,
        previous_response_id=plain.id,
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "encore"},
        ],
    )
    assert stored_path(server, several.id) == [
        *stored_path(server, plain.id),
        ("system", "Answer in French."),
        ("user", "encore"),
        ("assistant", "You said: encore"),
    ]
    after = client.responses.create(model=SCRIPTED, input="fin", previous_response_id=several.id)
    assert after.usage and several.usage
    assert after.usage.input_tokens > several.usage.input_tokens  # the developer message too
    # A response's output sent back as input, as the SDK's docs show, is the same history.
    third = client.responses.create(
        model=SCRIPTED,
        instructions="Be terse.",
        input=[
            {"role": "user", "content": "first"},
            *[item.model_dump() for item in first.output],  # with every field, phase too
            {"role": "user", "content": [{"type": "input_text", "text": "third"}]},
        ],
    )
    assert stored_path(server, third.id)[:3] == stored_path(server, second.id)[:3]


def test_a_response_can_be_rated_by_its_id(server: LiveServer, user: tuple[str, str]) -> None:
    response = server.client(user[1]).responses.create(model=SCRIPTED, input="rate me")
    rated = httpx.post(
        server.base_url + "/api/feedback",
        json={"message_id": response.id, "rating": 1},
        headers={"authorization": f"Bearer {user[1]}"},
    )
    assert rated.status_code == 200, rated.text
    assert rated.json() == {"message_id": response.id, "rating": 1, "reasons": [], "comment": None}


def test_a_previous_response_still_being_generated_is_refused(
    server: LiveServer, user: tuple[str, str]
) -> None:
    body = {"model": MODEL, "input": "Write a very long essay about lamps.", "stream": True}
    with httpx.stream(
        "POST",
        server.base_url + "/v1/responses",
        json={**body, "max_output_tokens": 1500},
        headers={"authorization": f"Bearer {user[1]}"},
        timeout=60,
    ) as stream:
        # Read up to the first piece of text without closing the stream (leaving the loop of
        # iter_lines would: the answer would be cut, not in progress).
        lines = stream.iter_lines()
        event: dict[str, Any] = {}
        while event.get("type") != "response.output_text.delta":
            line = next(lines)
            event = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
            if event.get("type") == "response.created":
                running = event["response"]["id"]
        with pytest.raises(openai.BadRequestError) as caught:
            server.client(user[1]).responses.create(
                model=SCRIPTED, input="too soon", previous_response_id=running
            )
    assert caught.value.code == "previous_response_in_progress"


def test_a_previous_response_of_someone_else_or_nobody_is_404(
    client: openai.OpenAI, server: LiveServer
) -> None:
    stranger = server.client(server.new_user(plan="roomy")[1])
    theirs = stranger.responses.create(model=SCRIPTED, input="mine")
    for previous in (theirs.id, f"resp_{uuid.uuid4().hex}", "not-an-id"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=SCRIPTED, input="hi", previous_response_id=previous)
        assert caught.value.code == "previous_response_not_found"
    unstored = client.responses.create(model=SCRIPTED, input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=SCRIPTED, input="hi", previous_response_id=unstored.id)


def test_the_token_limit_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Tell me a long story about a lighthouse.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.output_text  # what was generated is there


def test_the_defaults_that_frameworks_send_are_accepted(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=SCRIPTED,
        input="defaults",
        tools=[],
        tool_choice="auto",
        parallel_tool_calls=True,
        include=[],
        reasoning=None,
        background=False,
        service_tier="auto",
        truncation="disabled",
        text={"format": {"type": "text"}},
        metadata={"run": "42"},
        prompt_cache_key="session-7",
        stream_options={"include_obfuscation": False},
        stream=False,
    )
    assert response.output_text == "You said: defaults"
    assert response.metadata == {"run": "42"}


@pytest.mark.parametrize(
    "reasoning", [{}, {"effort": None}, {"effort": "none"}, {"effort": None, "summary": None}]
)
def test_reasoning_that_asks_for_nothing_is_accepted(
    client: openai.OpenAI, reasoning: dict[str, Any]
) -> None:
    """Frameworks send a ``reasoning`` object whatever the model, often empty."""
    response = client.responses.create(
        model=SCRIPTED,
        input=f"no reasoning {json.dumps(reasoning)}",
        reasoning=reasoning,
    )
    assert response.status == "completed"


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ('"metadata": {"k": "\\ud800"}', "metadata.k", "valid string"),
        (
            '"metadata": {' + ", ".join(f'"k{n}": "v"' for n in range(17)) + "}",
            "metadata",
            "at most 16",
        ),
        ('"metadata": {"k": "' + "v" * 513 + '"}', "metadata.k", "at most 512"),
        (
            '"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]',
            "input[0].content[0].type",
            "only text parts",
        ),
        (
            '"input": [{"type": "item_reference", "id": "msg_1"}]',
            "input[0].type",
            "only messages, function calls and their outputs",
        ),
        ('"input": [{"role": "robot", "content": "x"}]', "input[0].role", "'user'"),
    ],
)
def test_bad_input_is_a_400_that_names_it_before_anything_is_generated(
    server: LiveServer, user: tuple[str, str], body: str, param: str, says: str
) -> None:
    text = (
        '{"model": "'
        + SCRIPTED
        + '", '
        + (body if '"input"' in body else f'"input": "hi", {body}')
        + "}"
    )
    response = httpx.post(
        server.base_url + "/v1/responses",
        content=text.encode(),
        headers={"authorization": f"Bearer {user[1]}", "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"reasoning": {"effort": None, "summary": "auto"}}, "reasoning"),
        (
            {
                "background": True,
                "stream": True,
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            },
            "tools",
        ),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"conversation": "conv_1"}, "conversation"),
    ],
)
def test_what_is_not_offered_is_refused_by_name(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=SCRIPTED, input="hi", **extra)
    assert caught.value.code == "unsupported_parameter"
    assert param in caught.value.message


def test_the_answer_length_refusal_names_max_output_tokens(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=100_000)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "max_output_tokens"


def test_only_a_background_response_streams_again(client: openai.OpenAI) -> None:
    """As at OpenAI: the numbers of a stream made without ``background`` count its events,
    so a reader resuming from one would be given text twice (see
    tests/test_background_streams.py); JSON would read as an empty stream to the SDK."""
    made = client.responses.create(model=SCRIPTED, input="replay me")
    with pytest.raises(openai.BadRequestError) as caught:
        list(client.responses.retrieve(made.id, stream=True))
    assert caught.value.code == "unsupported_parameter" and caught.value.param == "stream"
    assert client.responses.retrieve(made.id).background is False
