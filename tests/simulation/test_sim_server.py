"""sim-backend as a client sees it: the openai SDK streams from it, its /metrics speak vLLM, and a
client that leaves stops its generation at once, whether it was running or still queued."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import openai
import pytest
import uvicorn

from lamplighter.simulation.gpu import profile
from lamplighter.simulation.server import SimSettings, create_app
from tests.conftest import free_port

T = TypeVar("T")
MODEL = "sim-test"


class SimServer:
    """sim-backend under uvicorn on its own thread and event loop."""

    def __init__(self, settings: SimSettings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SimServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("sim-backend failed to start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.loop.close()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics").text
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r'^([a-z_:]+)\{model_name="[^"]+"(,[^}]*)?\} (\S+)$', line)
            if match:
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return values


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(SimSettings(model=MODEL, seed=7)) as server:
        yield server


def wait_until(check: Callable[[], T | None], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result is not None:
            return result
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_it_lists_its_model_and_is_healthy(sim: SimServer) -> None:
    with sim.client() as client:
        assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(sim.url + "/health").status_code == 200


def test_it_streams_one_word_a_token_with_usage(sim: SimServer) -> None:
    with sim.client() as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me about lamps."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        words, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                words.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    text = "".join(words)
    assert len(text.split()) == 12 and finish == "length"
    assert usage is not None and usage.completion_tokens == 12
    assert usage.prompt_tokens == usage.total_tokens - 12 > 0


def test_answers_without_streaming_and_are_reproducible_for_a_seed(sim: SimServer) -> None:
    with sim.client() as client:

        def ask() -> str:
            answer = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Same question."}],
                max_tokens=40,
                seed=3,
                extra_body={"sim_prompt_tokens": 900},
            )
            assert answer.usage is not None and answer.usage.prompt_tokens == 900
            return answer.choices[0].message.content or ""

        first = ask()
        assert first and first == ask()


def test_an_impossible_request_gets_an_openai_error(sim: SimServer) -> None:
    with sim.client() as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=100_000,
        )
    assert refused.value.code == "context_length_exceeded"


def test_metrics_show_a_running_stream_and_a_disconnect_stops_it(sim: SimServer) -> None:
    before = sim.metrics()["vllm:generation_tokens_total"]
    with sim.client() as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Go on forever."}],
            max_tokens=5000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for index, _ in enumerate(stream):
            if index == 5:
                break
        during = sim.metrics()
        assert during["vllm:num_requests_running"] == 1
        assert 0 < during["vllm:kv_cache_usage_perc"] < 1
        stream.close()
    wait_until(lambda: sim.metrics()["vllm:num_requests_running"] == 0 or None)
    stopped = sim.metrics()["vllm:generation_tokens_total"]
    time.sleep(0.2)  # some thirty steps' time: nothing more is generated for it
    assert sim.metrics()["vllm:generation_tokens_total"] == stopped
    assert stopped - before < 1000
    assert sim.metrics()["vllm:kv_cache_usage_perc"] == 0


def test_a_client_that_leaves_the_queue_is_dropped_from_it() -> None:
    settings = SimSettings(model=MODEL, timing=profile("h100", max_num_seqs=1))
    with SimServer(settings) as sim, sim.client() as client:
        holder = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hold"}],
            max_tokens=3000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        next(iter(holder))
        impatient = openai.OpenAI(
            base_url=sim.url + "/v1", api_key="unused", max_retries=0, timeout=0.3
        )
        with impatient, pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "me too"}], max_tokens=5
            )
        wait_until(lambda: sim.metrics()["vllm:num_requests_waiting"] == 0 or None)
        assert sim.metrics()["vllm:num_requests_running"] == 1
        holder.close()
        wait_until(lambda: sim.metrics()["vllm:num_requests_running"] == 0 or None)
        assert sim.metrics()['vllm:request_success_total,finished_reason="length"'] == 0
