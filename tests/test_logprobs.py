"""Log probabilities through the official SDK: the embedded model's own, and those asked of an
OpenAI-compatible backend, passed back whole or streamed.

vLLM cannot run on this machine (no GPU), so the backend is a real HTTP server on 127.0.0.1
that streams as vLLM does when asked for ``logprobs``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import MODEL, LiveServer
from tests.test_router import sse
from tests.upstream_server import gateway_over, recording

LOGPROB_MODEL = "logprob-model"
ASK = [{"role": "user", "content": "Is the sea blue? Answer yes or no."}]


def _entry(token: str, logprob: float, top: int) -> dict[str, Any]:
    alternatives = [(token, logprob), ("No", math.log(0.05)), ("Maybe", math.log(0.01))]
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in alternatives[:top]
        ],
    }


def _answer(body: dict[str, Any]) -> bytes:
    """Two tokens, each with its log probability when asked (and ``top_logprobs`` of them)."""
    top = body.get("top_logprobs", 0)

    def chunk(token: str, logprob: float) -> dict[str, Any]:
        logprobs = {"content": [_entry(token, logprob, top)]} if body.get("logprobs") else None
        delta = {"content": token}
        return {"choices": [{"index": 0, "delta": delta, "logprobs": logprobs}]}

    return sse(
        chunk("Yes", math.log(0.9)),
        chunk(".", math.log(0.99)),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}},
        "[DONE]",
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[LiveServer, list[dict[str, Any]]]]:
    with (
        recording(_answer) as (url, received),
        gateway_over(url, (LOGPROB_MODEL,), tmp_path) as live,
    ):
        yield live, received


def test_log_probabilities_come_back_whole_and_streamed(
    gateway: tuple[LiveServer, list[dict[str, Any]]],
) -> None:
    live, received = gateway
    client = live.client(live.new_user(plan="roomy")[1])
    whole = client.chat.completions.create(
        model=LOGPROB_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=2,
    )
    assert received[-1]["logprobs"] is True and received[-1]["top_logprobs"] == 2
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [entry.token for entry in content or []] == ["Yes", "."]
    first = (content or [])[0]
    assert first.logprob == pytest.approx(math.log(0.9))
    assert [alt.token for alt in first.top_logprobs] == ["Yes", "No"]

    stream = client.chat.completions.create(
        model=LOGPROB_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        logprobs=True,
        stream=True,
    )
    tokens = [
        entry.token
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert tokens == ["Yes", "."]
    assert "top_logprobs" not in received[-1]

    plain = client.chat.completions.create(model=LOGPROB_MODEL, messages=ASK)  # type: ignore[arg-type]
    assert plain.choices[0].logprobs is None and "logprobs" not in received[-1]


def test_the_embedded_model_gives_its_own_log_probabilities(client: openai.OpenAI) -> None:
    """Greedy decoding picks the most likely token each time: every token is the first of its
    alternatives, with the same log probability, and the alternatives are ranked."""
    answer = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=3,
        temperature=0,
        max_tokens=8,
        seed=1,  # evaluated from scratch (no KV cache reused): the same logits each time
    )
    choice = answer.choices[0]
    content = choice.logprobs.content or []  # type: ignore[union-attr]
    assert answer.usage is not None and len(content) == answer.usage.completion_tokens - (
        choice.finish_reason == "stop"  # the end-of-turn token is counted, not shown
    )
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        best = entry.top_logprobs[0]
        assert best.token == entry.token and best.logprob == pytest.approx(entry.logprob)
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert sum(math.exp(p) for p in ranked) <= 1 + 1e-6
        assert bytes(entry.bytes or []).decode() == entry.token

    streamed = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        logprobs=True,
        temperature=0,
        max_tokens=8,
        seed=1,
        stream=True,
    )
    tokens = [
        entry
        for chunk in streamed
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert [e.token for e in tokens] == [e.token for e in content]
    assert [e.logprob for e in tokens] == pytest.approx([e.logprob for e in content], abs=1e-4)


def test_top_logprobs_needs_logprobs_and_is_at_most_20(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=ASK, top_logprobs=3)  # type: ignore[arg-type]
    assert refused.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            logprobs=True,
            top_logprobs=21,
        )
    assert refused.value.param == "top_logprobs"


def test_a_response_includes_its_log_probabilities_when_asked(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=ASK[0]["content"],
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        temperature=0,
        max_output_tokens=40,
    )
    [part] = response.output[0].content  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs
    assert "".join(entry.token for entry in part.logprobs) == response.output_text
    assert all(len(entry.top_logprobs) == 2 for entry in part.logprobs)
    assert response.top_logprobs == 2
    with client.responses.stream(
        model=MODEL,
        input=ASK[0]["content"],
        include=["message.output_text.logprobs"],
        temperature=0,
        max_output_tokens=40,
    ) as stream:
        deltas = [e for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert [entry.token for d in deltas for entry in d.logprobs] == [
        entry.token
        for entry in final.output[0].content[0].logprobs  # type: ignore[union-attr]
    ]
    plain = client.responses.create(model=MODEL, input="hi", max_output_tokens=3)
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_a_stop_sequence_takes_its_tokens_out_of_the_log_probabilities(
    client: openai.OpenAI,
) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        logprobs=True,
        temperature=0,
        seed=3,
        max_tokens=20,
        stop=["\n"],
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content
    content = choice.logprobs.content or []  # type: ignore[union-attr]
    assert "".join(entry.token for entry in content) == choice.message.content
