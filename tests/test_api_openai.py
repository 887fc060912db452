"""The OpenAI-compatible API, driven by the official ``openai`` SDK against a running server
and the real embedded model."""

from __future__ import annotations

import openai
import pytest

from lamplighter.chat import message_id_from
from lamplighter.store.models import Message
from lamplighter.store.usage import UsageLedger
from tests.conftest import FAILING, MODEL, PACED, SCRIPTED, LiveServer

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_models_list_names_every_served_model(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [MODEL, SCRIPTED, FAILING, PACED]
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion_comes_from_the_model_with_its_real_token_counts(
    server: LiveServer, client: openai.OpenAI
) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=40, seed=7)
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert answer.model == MODEL
    # The prompt, rendered with the model's own chat template, has more tokens than words.
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > len(HELLO[0]["content"].split())
    assert 1 <= answer.usage.completion_tokens <= 40
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_the_completion_id_names_the_stored_answer_and_its_usage(
    server: LiveServer, client: openai.OpenAI
) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20)
    message_id = message_id_from(answer.id)
    assert message_id is not None

    async def load(services):  # type: ignore[no-untyped-def]
        async with services.db.transaction() as session:
            message = await session.get(Message, message_id)
            ledger = await UsageLedger(session).of_message(message_id)
            return message, ledger

    message, usage = server.call(load)
    assert message.role == "assistant"
    assert message.content == answer.choices[0].message.content
    assert message.status == "complete"
    assert message.finish_reason == answer.choices[0].finish_reason
    assert usage.prompt_tokens == answer.usage.prompt_tokens
    assert usage.completion_tokens == answer.usage.completion_tokens
    assert usage.ttft_ms is not None and usage.latency_ms >= usage.ttft_ms


def test_streaming_with_usage_matches_the_non_streamed_answer(client: openai.OpenAI) -> None:
    # Seeded: evaluated from scratch each time. Greedy decoding alone is not repeatable here,
    # as a prompt sharing a prefix with the one before reuses its KV cache (see embedded.py).
    kwargs = {"model": MODEL, "messages": HELLO, "max_tokens": 30, "temperature": 0.0, "seed": 7}
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert text == whole.choices[0].message.content
    assert finishes == [whole.choices[0].finish_reason]
    assert usage is not None and whole.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    assert len({c.id for c in chunks}) == 1


def test_streaming_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, stream=True)
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_is_obeyed(client: openai.OpenAI, field: str) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        temperature=0.0,
        **{field: 3},
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.choices[0].finish_reason == "length"


def test_same_seed_same_answer(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str | None:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=25,
            temperature=1.0,
            top_p=0.9,
            seed=seed,
            store=False,
        )
        return answer.choices[0].message.content

    assert ask(1234) == ask(1234)


def test_top_p_zero_keeps_only_the_likeliest_token(client: openai.OpenAI) -> None:
    """As at OpenAI, top_p 0 is allowed: whatever the seed and temperature, the same answer."""

    def ask(seed: int) -> str | None:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=25,
            temperature=1.5,
            top_p=0,
            seed=seed,
            store=False,
        )
        return answer.choices[0].message.content

    assert ask(1) == ask(2) == ask(3)


def test_stop_sequence_cuts_the_answer_before_it(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    full = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=60, temperature=0.0
    )
    text = full.choices[0].message.content or ""
    assert "5" in text, text
    cut = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=60, temperature=0.0, stop=["5"]
    )
    assert cut.choices[0].message.content == text[: text.index("5")]
    assert cut.choices[0].finish_reason == "stop"


def test_user_field_is_accepted(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "hi"}], user="end-user-42"
    )
    assert answer.choices[0].message.content == "You said: hi"


def test_penalties_reach_the_model(client: openai.OpenAI) -> None:
    # Penalties weigh against tokens already generated: a count repeats its separators, a
    # greeting repeats nothing (and was only ever changed by a reused KV cache). Seeded, so
    # that both are evaluated from scratch (see the streaming test above).
    count = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    kwargs = {"model": MODEL, "messages": count, "max_tokens": 20, "temperature": 0.0, "seed": 3}
    plain = client.chat.completions.create(**kwargs)
    penalised = client.chat.completions.create(
        **kwargs, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert penalised.choices[0].message.content != plain.choices[0].message.content


def test_a_backend_failure_mid_stream_is_reported_and_stored_as_an_error(
    server: LiveServer, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=FAILING,
        messages=[{"role": "user", "content": "one two three four five"}],
        stream=True,
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "You said: one"  # what came before the failure was delivered

    async def last_answer(services):  # type: ignore[no-untyped-def]
        from sqlalchemy import select

        async with services.db.transaction() as session:
            result = await session.execute(
                select(Message).where(Message.model == FAILING).order_by(Message.id.desc())
            )
            return result.scalars().first()

    message = server.call(last_answer)
    assert (message.status, message.finish_reason, message.content) == (
        "error",
        "error",
        "You said: one",
    )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model=FAILING, messages=[{"role": "user", "content": "a b c d e"}]
        )
