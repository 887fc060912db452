"""The official ``openai`` SDK's view of smaller promises: a deleted background response
stops, models a plan cannot use are not listed, the current SDK's chat parameters are accepted,
errors name the Responses API's fields, logprobs join to the content, sampling keeps to the
likely tokens, model cards say when they were served from."""

from __future__ import annotations

import math
import time
from typing import Any

import openai
import pytest
from sqlalchemy import select

from lamplighter.store.models import User
from lamplighter.store.usage import UsageLedger
from tests.conftest import MODEL, PACED, SCRIPTED, LiveServer


def usage_of(server: LiveServer, email: str) -> list[Any]:
    """The user's usage ledger rows, oldest first."""

    async def load(services: Any) -> list[Any]:
        async with services.db.transaction() as session:
            user = await session.scalar(select(User).where(User.email == email))
            return list(await UsageLedger(session).of_user(user.id))

    return server.call(load)


def test_deleting_a_running_background_response_stops_its_generation(
    server: LiveServer,
) -> None:
    email, key = server.new_user(plan="roomy")
    client = server.client(key)
    words = 1500  # echoed a word every 2 ms: three seconds and more of generation
    made = client.responses.create(
        model=PACED, input=" ".join(["lamp"] * words), max_output_tokens=2000, background=True
    )
    assert made.status == "in_progress"

    client.responses.delete(made.id)
    # Stopped as a cancel stops it: settled by the time the delete answers, charged for the
    # few tokens made before it, not for the whole answer it would have run on to.
    (usage,) = usage_of(server, email)
    assert usage.finish_reason == "cancelled"
    assert usage.completion_tokens < words // 10
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel(made.id)


def test_models_lists_only_those_the_callers_plan_may_use(server: LiveServer) -> None:
    plan = "scripted-only"

    async def restricted(services: Any) -> None:
        roomy = services.plans.get("roomy").as_dict()
        limits = {k: v for k, v in roomy.items() if k not in ("name", "models")}
        await services.plans.put(plan, {**limits, "models": [SCRIPTED]}, create=True)

    server.call(restricted)
    client = server.client(server.new_user(plan=plan)[1])

    assert [model.id for model in client.models.list()] == [SCRIPTED]
    assert client.models.retrieve(SCRIPTED).id == SCRIPTED
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve(MODEL)  # served, but not to this plan
    assert refused.value.code == "model_not_found"
    everything = server.client(server.new_user(plan="roomy")[1]).models.list()
    assert MODEL in [model.id for model in everything]


def test_a_model_card_says_when_it_was_served_from(client: openai.OpenAI) -> None:
    listed = {model.created for model in client.models.list()}
    assert len(listed) == 1 and 0 < listed.pop() <= time.time()
    assert client.models.retrieve(SCRIPTED).created == client.models.retrieve(SCRIPTED).created


def test_the_current_sdks_chat_parameters_are_accepted(client: openai.OpenAI) -> None:
    hello: Any = [{"role": "user", "content": "hi"}]
    for verbosity in (None, "low", "medium", "high"):
        answer = client.chat.completions.create(
            model=SCRIPTED,
            messages=hello,
            prompt_cache_key="conversation-7",
            prompt_cache_retention="24h",
            safety_identifier="end-user-42",
            verbosity=verbosity,  # type: ignore[arg-type]
        )
        assert answer.choices[0].message.content == "You said: hi"
    with client.chat.completions.stream(
        model=SCRIPTED,
        messages=hello,
        prompt_cache_retention=None,
        safety_identifier=None,
        stream_options={"include_obfuscation": False, "include_usage": True},
    ) as stream:
        assert stream.get_final_completion().choices[0].message.content == "You said: hi"
    streamed = client.responses.create(
        model=SCRIPTED,
        input="hi",
        prompt_cache_retention="in_memory",
        text={"verbosity": "low"},
        stream=True,
        stream_options={"include_obfuscation": False},
    )
    done = [e.response.output_text for e in streamed if e.type == "response.completed"]
    assert done == ["You said: hi"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("verbosity", "loud"),
        ("prompt_cache_retention", "1y"),
        ("safety_identifier", 42),
        ("prompt_cache_key", "k" * 257),
    ],
)
def test_those_parameters_are_checked(client: openai.OpenAI, field: str, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "hi"}], extra_body={field: value}
        )
    assert refused.value.param == field


def test_an_input_too_long_for_the_model_names_input_in_the_responses_api(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=SCRIPTED, input="lamp " * 5000)
    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "input")
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "lamp " * 5000}]
        )
    assert (chat.value.code, chat.value.param) == ("context_length_exceeded", "messages")


def test_logprobs_join_to_the_content_when_a_stop_begins_inside_a_token(
    client: openai.OpenAI,
) -> None:
    """The stop begins in the middle of a token: the answer ends at the last whole token
    before it, and the tokens' log probabilities join to exactly that, streamed or not."""
    ask: Any = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe a lighthouse at night."}],
        "max_tokens": 30,
        "temperature": 0.0,
        "seed": 3,
        "logprobs": True,
    }
    free = client.chat.completions.create(**ask)
    tokens = [entry.token for entry in free.choices[0].logprobs.content or []]  # type: ignore[union-attr]
    text = free.choices[0].message.content or ""
    assert "".join(tokens) == text
    # A stop that begins after a token's first character and runs into the next token.
    k, stop = next(
        (k, tokens[k][1:] + tokens[k + 1])
        for k in range(1, len(tokens) - 1)
        if len(tokens[k]) > 1
        and text.find(tokens[k][1:] + tokens[k + 1]) == len("".join(tokens[:k])) + 1
    )
    whole = "".join(tokens[:k])

    cut = client.chat.completions.create(**ask, stop=stop)
    entries = cut.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert cut.choices[0].message.content == whole
    assert [entry.token for entry in entries] == tokens[:k]
    assert cut.choices[0].finish_reason == "stop"

    content, joined = [], []
    for chunk in client.chat.completions.create(**ask, stop=stop, stream=True):
        delta = chunk.choices[0]
        content.append(delta.delta.content or "")
        logprobs = delta.logprobs.content if delta.logprobs else None
        joined.append("".join(entry.token for entry in logprobs or []))
        assert joined[-1] == content[-1]  # each delta carries its own tokens' entries
    assert "".join(content) == whole


def test_the_embedded_model_never_samples_a_token_far_below_the_likeliest(
    client: openai.OpenAI,
) -> None:
    """The embedded engine keeps llama.cpp's min_p of 0.05 (and top_k 40) before temperature:
    even at temperature 2, no token sampled is more than ln(20) nats below the likeliest."""
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about lamps."}],
        max_tokens=40,
        temperature=2.0,
        seed=11,
        logprobs=True,
        top_logprobs=1,
    )
    entries = answer.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert entries
    for entry in entries:
        assert entry.logprob >= entry.top_logprobs[0].logprob - math.log(20) - 1e-3


def test_a_request_that_can_never_fit_the_plans_tokens_per_minute_is_a_400(
    server: LiveServer,
) -> None:
    """As docs/api.md's error table says: no wait would help, so no 429 and no retry-after."""
    plan = "small-bucket"

    async def small(services: Any) -> None:
        roomy = services.plans.get("roomy").as_dict()
        limits = {k: v for k, v in roomy.items() if k != "name"}
        await services.plans.put(plan, {**limits, "tokens_per_minute": 100}, create=True)

    server.call(small)
    client = server.client(server.new_user(plan=plan)[1])
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=500
        )
    assert (refused.value.code, refused.value.param) == (
        "request_too_large",
        "max_completion_tokens",
    )
    assert "retry-after" not in refused.value.response.headers
