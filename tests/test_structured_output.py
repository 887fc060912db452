"""Structured output through the official SDK's own helpers (``chat.completions.parse``,
``.stream``, ``responses.parse``): JSON schemas enforced by the real embedded model's grammar,
passed on to an OpenAI-compatible upstream, refused with a reason when they cannot be
followed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel

from lamplighter.engines.base import GenerationRequest, OutputFormat
from lamplighter.traffic.cache import cache_key
from tests.conftest import MODEL, LiveServer
from tests.upstream_server import gateway_over

ASK = [{"role": "user", "content": "Describe Paris in a few fields."}]


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


class City(BaseModel):
    name: Literal["Paris", "London", "Berlin", "Rome"]
    country: Literal["France", "United Kingdom", "Germany", "Italy"]
    population_millions: int
    is_capital: bool


class TwoCities(BaseModel):
    # A nested model: the SDK's schema refers to City through "$defs".
    first: City
    second: City


def test_chat_completions_parse_gives_an_object_of_the_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=ASK, response_format=City, max_tokens=100, seed=3
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    # The text itself is the JSON, its keys in the schema's order.
    assert list(json.loads(choice.message.content or "")) == list(City.model_fields)


def test_a_schema_with_references_is_followed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Name two European cities."}],
        response_format=TwoCities,
        max_tokens=200,
        seed=5,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, TwoCities) and isinstance(parsed.second, City)


def test_a_streamed_answer_follows_the_schema_too(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, response_format=City, max_tokens=100, seed=4
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta" and event.delta]
        final = stream.get_final_completion()
    assert len(deltas) > 3  # streamed token by token, not in one piece at the end
    assert isinstance(final.choices[0].message.parsed, City)
    assert "".join(deltas) == final.choices[0].message.content


def test_json_mode_sends_a_json_object(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": 'Reply with the JSON {"ok": true} and nothing else.'}
        ],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)


def test_responses_parse_gives_an_object_of_the_schema(client: openai.OpenAI) -> None:
    response = client.responses.parse(
        model=MODEL, input=ASK[0]["content"], text_format=City, max_output_tokens=100
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, City)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.text.format.name == "City"
    again = client.responses.retrieve(response.id)  # the format is stored with the answer
    assert again.text == response.text and again.output_text == response.output_text


@pytest.mark.parametrize(
    ("response_format", "param", "says"),
    [
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "remote",
                    "schema": {"$ref": "https://example.com/schema.json"},
                },
            },
            "response_format.json_schema.schema",
            "nothing is fetched",
        ),
        ({"type": "json_schema"}, "response_format.json_schema", "Missing required"),
        (
            {"type": "json_schema", "json_schema": {"name": "deep", "schema": _nested(40)}},
            "response_format.json_schema.schema",
            "nest at most 32 levels",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "has spaces", "schema": {}}},
            "response_format.json_schema.name",
            "pattern",
        ),
        ({"type": "yaml"}, "response_format.type", "json_schema"),
        # A reference to a definition the schema does not have: the grammar cannot be built.
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "broken", "schema": {"$ref": "#/$defs/Missing"}},
            },
            "response_format",
            "cannot follow this JSON schema",
        ),
    ],
)
def test_a_format_that_cannot_be_followed_is_a_400_that_says_why(
    client: openai.OpenAI, response_format: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=20,
            extra_body={"response_format": response_format},
        )
    assert refused.value.param == param
    assert says in refused.value.message


def test_a_responses_format_without_its_schema_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=MODEL, input="hi", text={"format": {"type": "json_schema", "name": "x"}}
        )
    assert refused.value.param == "text.format.schema"


def test_the_cache_tells_formats_apart() -> None:
    """An exact-match cache must never answer a request for JSON with a plain answer."""
    plain = GenerationRequest(model=MODEL, turns=(), temperature=0)
    keys = {
        cache_key("p", replace(plain, output_format=output), 10)
        for output in (None, OutputFormat(), OutputFormat(schema="{}"))
    }
    assert len(keys) == 3


@pytest.fixture
def relay(server: LiveServer, tmp_path: Path) -> Iterator[LiveServer]:
    """A gateway whose only backend is the session's server as an OpenAI-compatible upstream
    (as vLLM would be): the format must travel in the upstream request."""
    _, key = server.new_user(plan="roomy")
    with gateway_over(server.base_url + "/v1", (MODEL,), tmp_path, api_key=key) as live:
        yield live


def test_an_upstream_backend_is_asked_for_the_format_and_its_refusal_is_passed_on(
    relay: LiveServer,
) -> None:
    _, key = relay.new_user(plan="roomy")
    client = relay.client(key)
    completion = client.chat.completions.parse(
        model=MODEL, messages=ASK, response_format=City, max_tokens=100, seed=3
    )
    assert isinstance(completion.choices[0].message.parsed, City)
    broken = {"type": "json_schema", "json_schema": {"name": "b", "schema": {"$ref": "#/x"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=20, extra_body={"response_format": broken}
        )
    assert "refused the request" in refused.value.message
    assert refused.value.param == "response_format"  # the why stays in the gateway's log


def test_an_answer_cut_inside_a_character_ends_before_it(client: openai.OpenAI) -> None:
    # The model spells an emoji in several tokens of a few bytes each; a token limit that
    # falls between them left a replacement character (U+FFFD) at the end of the answer.
    schema = {"type": "string", "enum": ["😀😀😀"]}
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Smile."}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        max_tokens=2,
        seed=1,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == '"'
