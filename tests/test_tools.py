"""Tool calling through the official SDK: tools go to an OpenAI-compatible backend, its calls
come back whole or streamed, the conversation with the calls and their results is stored as one
path, and what cannot call tools says so.

vLLM and SGLang cannot run on this machine (no GPU), so the backend here is a real HTTP server
on 127.0.0.1 that answers as vLLM does with ``--enable-auto-tool-choice``: a tool call, streamed
in pieces, to a user's question, and text once the tool's result is in the messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from lamplighter.store.conversations import Conversations
from tests.conftest import MODEL, LiveServer
from tests.test_router import sse
from tests.upstream_server import gateway_over, recording

TOOL_MODEL = "tool-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
SUNNY = "It is sunny in Paris."
# A question the backend answers with a word before its call.
SAY_AND_ASK = "Say what you will do, then look up the weather in Paris."
SAID = "Let me look that up."


# A question the backend answers with nothing at all (a reasoning model whose thinking took
# every token it was allowed, say).
SAY_NOTHING = "Say nothing."
# A question the backend answers with two calls at once, their pieces in turns.
BOTH_CITIES = "Look up the weather in Paris and in Rome at once."


def _in_turns(name: str) -> list[dict[str, Any]]:
    """Two parallel calls streamed as some servers do: each opened, then their arguments'
    pieces alternating."""

    def piece(index: int, arguments: str, opened: str | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if opened is not None:
            call |= {"id": opened, "type": "function", "function": {"name": name, "arguments": ""}}
        return _choice({"tool_calls": [call]})

    return [
        piece(0, "", "call_paris"),
        piece(1, "", "call_rome"),
        piece(0, '{"city": '),
        piece(1, '{"city": '),
        piece(0, '"Paris"}'),
        piece(1, '"Rome"}'),
    ]


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _answer(body: dict[str, Any]) -> bytes:
    """vLLM's stream: a call of the first tool (its arguments in two pieces) when the last
    message is a question, the text of an answer once a tool has answered."""
    usage = {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9}}
    if body["messages"][-1]["role"] == "tool":
        return sse(
            _choice({"role": "assistant", "content": "It is sunny"}),
            _choice({"content": " in Paris."}),
            _choice({}, "stop"),
            usage,
            "[DONE]",
        )
    if body["messages"][-1]["content"] == SAY_NOTHING:
        return sse(_choice({"role": "assistant"}), _choice({}, "stop"), usage, "[DONE]")
    name = body["tools"][0]["function"]["name"]
    if body["messages"][-1]["content"] == BOTH_CITIES:
        return sse(*_in_turns(name), _choice({}, "tool_calls"), usage, "[DONE]")
    said = (
        [_choice({"role": "assistant", "content": SAID})]
        if body["messages"][-1]["content"] == SAY_AND_ASK
        else []
    )
    return sse(
        *said,
        _choice(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_7",
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ],
            }
        ),
        _choice({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _choice({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _choice({}, "tool_calls"),
        usage,
        "[DONE]",
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[LiveServer, list[dict[str, Any]]]]:
    """A gateway whose backend calls tools; and the bodies that backend received."""
    with (
        recording(_answer) as (url, received),
        gateway_over(url, (TOOL_MODEL,), tmp_path, capacity=4) as live,
    ):
        yield live, received


def test_a_tool_call_and_its_result_make_one_stored_conversation(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, received = gateway
    _, key = live.new_user(plan="roomy")
    client = live.client(key)
    first = client.chat.completions.create(
        model=TOOL_MODEL,
        messages=[ASK],
        tools=[WEATHER],
        tool_choice="auto",  # type: ignore[list-item]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id == "call_7" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert received[-1]["tools"] == [WEATHER] and received[-1]["tool_choice"] == "auto"
    assert first.usage is not None and first.usage.completion_tokens == 9

    # The SDK's own message sent back, then the tool's result: the model answers in text.
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}
    second = client.chat.completions.create(
        model=TOOL_MODEL,
        messages=[ASK, choice.message.model_dump(), result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.choices[0].message.content == SUNNY
    assert second.choices[0].message.tool_calls is None
    sent = received[-1]["messages"]
    assert sent[1]["tool_calls"] == [call.model_dump()] and sent[1]["content"] is None
    assert sent[2] == result

    # Stored as one path: the answer that called the tool is the one the second request
    # continued, not a copy.
    messages = list(client.chat.completions.messages.list(second.id))
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    path = _stored_path(live, second.id)
    assert path[1].id == uuid.UUID(first.id.removeprefix("chatcmpl-"))
    assert path[1].tool_calls == [call.model_dump()] and path[2].tool_call_id == "call_7"
    again = client.chat.completions.retrieve(first.id).choices[0].message
    assert again.tool_calls == choice.message.tool_calls
    # Operators see it: two requests with tools, one answer that called them.
    metrics = httpx.get(live.base_url + "/metrics", timeout=5).text
    assert 'lamplighter_request_features_total{feature="tools"} 2.0' in metrics
    assert 'lamplighter_request_features_total{feature="tool_calls"} 1.0' in metrics


def _stored_path(live: LiveServer, completion: str) -> list[Any]:
    async def path(services: Any) -> list[Any]:
        async with services.db.transaction() as session:
            answer = uuid.UUID(completion.removeprefix("chatcmpl-"))
            return list(await Conversations(session).path_to(answer))

    return live.call(path)


def test_streamed_tool_calls_arrive_in_pieces_and_add_up(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    with client.chat.completions.stream(
        model=TOOL_MODEL,
        messages=[ASK],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        pieces = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    # As the backend sent them (the SDK reports the call's opening piece, with no arguments).
    assert [p.arguments_delta for p in pieces if p.arguments_delta] == ['{"city": ', '"Paris"}']
    [call] = final.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.content is None  # as when it is not streamed
    raw = client.chat.completions.create(
        model=TOOL_MODEL,
        messages=[ASK],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        stream=True,
    )
    first = next(iter(raw)).choices[0].delta
    assert first.role == "assistant" and first.content is None and first.tool_calls
    raw.close()
    # The helper's message goes back as it is, with what the SDK added for itself (the parsed
    # answer and arguments, the pieces' index).
    result = {"role": "tool", "tool_call_id": call.id, "content": "clear"}
    for message in (final.choices[0].message, final.choices[0].message.model_dump()):
        answer = client.chat.completions.create(
            model=TOOL_MODEL,
            messages=[ASK, message, result],  # type: ignore[list-item]
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert answer.choices[0].message.content == SUNNY


CALLING = {
    "role": "assistant",
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ],
}


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"tool_choice": "required", "tools": None}, "tool_choice", "only allowed when"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "no tool named 'nope'",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools", "same name"),
        (
            {"messages": [ASK, {"role": "tool", "content": "42"}]},
            "messages[1].tool_call_id",
            "Missing required",
        ),
        (
            {"messages": [{**ASK, "tool_call_id": "x"}]},
            "messages[0].tool_call_id",
            "only for a message of role 'tool'",
        ),
        (
            {"messages": [ASK, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
            "messages[1].tool_call_id",
            "must answer a call of the assistant message before it",
        ),
        (
            {"messages": [ASK, CALLING, {"role": "tool", "tool_call_id": "other", "content": "x"}]},
            "messages[2].tool_call_id",
            "no call there has the id 'other'",
        ),
        (
            {"messages": [ASK, CALLING, {"role": "user", "content": "Well?"}]},
            "messages[1].tool_calls",
            "these had none: call_1",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"$ref": "https://x.org/s"}},
                    }
                ]
            },
            "tools[0].function.parameters",
            "nothing is fetched",
        ),
    ],
)
def test_bad_tool_use_is_a_400_that_names_it(
    client: openai.OpenAI, change: dict[str, Any], param: str, says: str
) -> None:
    body = {"messages": [ASK], "tools": [WEATHER], **change}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=5, **body)
    assert refused.value.param == param and says in refused.value.message


def test_the_embedded_model_says_it_cannot_call_tools(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[ASK], tools=[WEATHER])  # type: ignore[list-item]
    assert refused.value.param == "tools" and "cannot call tools" in refused.value.message
    # Told not to use them, it answers.
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[ASK],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=5,  # type: ignore[list-item]
    )
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


# The Responses API describes a function tool with chat completions' fields one level up.
WEATHER_TOOL = {"type": "function", **WEATHER["function"]}


def test_the_responses_api_calls_tools_and_continues_from_their_output(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, received = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    first = client.responses.create(
        model=TOOL_MODEL,
        input=ASK["content"],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert first.status == "completed" and first.output_text == ""
    [call] = first.output
    assert call.type == "function_call" and call.call_id == "call_7"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    # The backend was asked in chat completions' shape.
    assert received[-1]["tools"] == [WEATHER]
    assert received[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    retrieved = client.responses.retrieve(first.id)
    assert retrieved.output == first.output and retrieved.tools == first.tools

    output = {"type": "function_call_output", "call_id": call.call_id, "output": "clear"}
    second = client.responses.create(
        model=TOOL_MODEL,
        previous_response_id=first.id,
        input=[output],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.output_text == SUNNY
    # What it was generated from, as Responses items (newest first by default).
    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == "call_7"  # type: ignore[union-attr]
    newest = client.responses.input_items.list(second.id, limit=1)
    assert newest.data[0].type == "function_call_output" and newest.has_more
    sent = received[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_7" and sent[2]["tool_call_id"] == "call_7"
    # The same exchange sent whole (the output items as the SDK made them) continues the same
    # stored path: the call is the stored answer's, not a copy.
    third = client.responses.create(
        model=TOOL_MODEL,
        input=[ASK, call.model_dump(), output],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    path = _stored_path(live, "chatcmpl-" + third.id.removeprefix("resp_"))
    assert path[1].id == uuid.UUID(first.id.removeprefix("resp_"))
    # An output for a call nobody made is refused, as at OpenAI.
    stray = {"type": "function_call_output", "call_id": "nope", "output": "x"}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=TOOL_MODEL,
            previous_response_id=first.id,
            input=[stray],  # type: ignore[list-item]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
    assert refused.value.param == "input[0].tool_call_id"


def test_a_streamed_response_streams_the_call_and_its_arguments(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    with client.responses.stream(
        model=TOOL_MODEL,
        input=ASK["content"],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.output_text.delta" not in kinds  # the answer only called the tool
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas == ['{"city": ', '"Paris"}']
    assert (
        kinds.index("response.output_item.added")
        < kinds.index("response.function_call_arguments.done")
        < kinds.index("response.completed")
    )
    [call] = final.output
    assert call.type == "function_call" and call.arguments == '{"city": "Paris"}'


def test_a_streamed_response_closes_each_item_before_the_next_opens(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    with client.responses.stream(
        model=TOOL_MODEL,
        input=SAY_AND_ASK,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        events = [(e.type, getattr(e, "output_index", None)) for e in stream]
        final = stream.get_final_response()
    opened = [index for kind, index in events if kind == "response.output_item.added"]
    closed = [index for kind, index in events if kind == "response.output_item.done"]
    assert opened == closed == [0, 1]
    assert events.index(("response.output_item.done", 0)) < events.index(
        ("response.output_item.added", 1)
    )
    message, call = final.output
    assert message.type == "message" and final.output_text == SAID
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}


def test_parallel_calls_streamed_in_turns_are_each_done_with_their_whole_arguments(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    """An item is done once: both calls stay open while their pieces come in turns, and each
    is done with its whole arguments (the first was once done with none at the second's
    first piece, and its pieces kept coming after)."""
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    with client.responses.stream(
        model=TOOL_MODEL,
        input=BOTH_CITIES,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = {e.output_index: e for e in events if e.type == "response.function_call_arguments.done"}
    assert {i: json.loads(e.arguments) for i, e in done.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Rome"},
    }
    for index in (0, 1):
        ended = next(
            at
            for at, e in enumerate(events)
            if e.type == "response.output_item.done" and e.output_index == index
        )
        later = events[ended:]
        assert not [e for e in later if getattr(e, "output_index", None) == index][1:]
        pieces = "".join(
            e.delta
            for e in events
            if e.type == "response.function_call_arguments.delta" and e.output_index == index
        )
        assert pieces == done[index].arguments
    paris, rome = final.output
    assert (paris.call_id, rome.call_id) == ("call_paris", "call_rome")


def test_an_answer_with_neither_text_nor_calls_streams_to_its_end(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    """Its empty message is opened and done, then the response completed (the stream broke
    off mid-body: the message had no place in the finished output)."""
    live, _ = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    with client.responses.stream(model=TOOL_MODEL, input=SAY_NOTHING) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed" and "response.output_item.done" in kinds
    assert final.status == "completed" and final.output_text == ""
