"""The simulated GPU behaves like vLLM on a real one: calibrated step times, continuous batching,
chunked prefill that never stalls running streams, a KV cache it never overfills."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.simulation.gpu import (
    A100,
    H100,
    Engine,
    Request,
    TimingModel,
    largest_concurrency,
    profile,
    saturate,
)


def run_until_done(engine: Engine, now: float = 0.0) -> float:
    while engine.has_work:
        step = engine.step(now)
        assert step is not None
        now = step.batch.ends
    return now


def test_a_single_stream_decodes_at_the_measured_speed() -> None:
    # Lambda's vLLM 0.6 runs of Llama-3-8B-Instruct: about 7.2 ms a token on an H100 SXM and
    # 11.5 ms on an A100 SXM at small batch (see docs/simulation.md).
    for model, measured in ((H100, 7.2e-3), (A100, 11.5e-3)):
        engine = Engine(model)
        engine.add(Request(1, prompt_tokens=200, output_tokens=101))
        first = engine.step(0.0)
        assert first is not None and first.first  # the prompt fits one step: first token
        end = run_until_done(engine, first.batch.ends)
        per_token = (end - first.batch.ends) / 100
        assert per_token == pytest.approx(measured, rel=0.1)


def test_a_batch_prefill_takes_as_long_as_the_measured_time_to_first_token() -> None:
    # Ten prompts, 1,369 tokens in all, measured at 62 ms (H100) and 127 ms (A100).
    lengths = (13, 25, 27, 10, 329, 29, 399, 328, 4, 205)
    for model, measured in ((H100, 0.062), (A100, 0.127)):
        engine = Engine(model)
        for index, length in enumerate(lengths):
            engine.add(Request(index, length, 5))
        step = engine.step(0.0)
        assert step is not None and len(step.first) == 10
        assert step.batch.duration == pytest.approx(measured, rel=0.1)


def test_steps_take_longer_but_yield_more_tokens_as_the_batch_grows() -> None:
    durations, throughputs = [], []
    for batch in (1, 8, 32, 128):
        engine = Engine(H100)
        for index in range(batch):
            engine.add(Request(index, 500, 50))
        now = 0.0
        while True:  # prefill (in chunks) until every sequence is decoding
            step = engine.step(now)
            assert step is not None
            now = step.batch.ends
            if not engine.num_waiting and all(r.generated for r in engine.running):
                break
        step = engine.step(now)
        assert step is not None and len(step.emitted) == batch
        durations.append(step.batch.duration)
        throughputs.append(batch / step.batch.duration)
    assert durations == sorted(durations) and durations[-1] > 2 * durations[0]
    assert throughputs == sorted(throughputs) and throughputs[-1] > 20 * throughputs[0]


def test_a_new_request_joins_the_running_batch_at_the_next_step() -> None:
    engine = Engine(H100)
    engine.add(Request(1, 100, 1000))
    now = 0.0
    for _ in range(5):
        step = engine.step(now)
        assert step is not None
        now = step.batch.ends
    engine.add(Request(2, 100, 10, arrived=now))
    step = engine.step(now)
    assert step is not None
    assert {r.id for r in step.emitted} == {1, 2}  # no waiting for request 1 to finish
    assert step.first[0].id == 2


def test_a_long_prompt_is_chunked_and_never_stalls_running_streams() -> None:
    model = H100
    engine = Engine(model)
    engine.add(Request(1, 50, 100))
    engine.step(0.0)
    engine.add(Request(2, 5 * model.max_batched_tokens, 10))
    chunks = 0
    now = 1.0
    while True:
        step = engine.step(now)
        assert step is not None
        now = step.batch.ends
        assert step.batch.tokens <= model.max_batched_tokens
        assert 1 in {r.id for r in step.emitted}  # the decode kept flowing
        chunks += 1
        if step.first:
            break
    assert chunks == math.ceil(5 * model.max_batched_tokens / (model.max_batched_tokens - 1))


def test_a_full_kv_cache_preempts_and_every_request_still_finishes() -> None:
    small = TimingModel(
        name="tiny",
        step_overhead_s=1e-3,
        per_token_s=1e-5,
        per_context_token_s=0.0,
        kv_cache_tokens=4096,
        max_model_len=4096,
    )
    engine = Engine(small)
    for index in range(8):
        engine.add(Request(index, 300, 400))
    finished: list[Request] = []
    now = 0.0
    while engine.has_work:
        step = engine.step(now)
        assert step is not None
        now = step.batch.ends
        finished += step.finished
        assert engine.kv_used_blocks <= small.kv_blocks
    assert engine.counters.preemptions > 0
    assert sorted(r.id for r in finished) == list(range(8))
    assert all(r.generated == 400 for r in finished)
    assert engine.kv_used_blocks == 0


def test_the_priority_policy_serves_the_better_class_first() -> None:
    model = profile("h100", max_num_seqs=2)
    engine = Engine(model, "priority")
    for index in range(6):
        engine.add(Request(index, 100, 20, priority=2))
    engine.add(Request(99, 100, 20, priority=0))
    first_tokens: list[int] = []
    now = 0.0
    while engine.has_work:
        step = engine.step(now)
        assert step is not None
        now = step.batch.ends
        first_tokens += [r.id for r in step.first]
    assert first_tokens.index(99) < 2
    fcfs = Engine(model)
    for index in range(6):
        fcfs.add(Request(index, 100, 20, priority=2))
    fcfs.add(Request(99, 100, 20, priority=0))
    assert run_until_done(fcfs) > 0 and fcfs.counters.finished == 7


def test_an_aborted_request_produces_nothing_more_even_mid_step() -> None:
    engine = Engine(H100)
    engine.add(Request(1, 100, 50))
    engine.add(Request(2, 100, 50))
    batch = engine.schedule(0.0)
    assert batch is not None
    assert engine.abort(2) is not None
    step = engine.complete(batch)
    assert [r.id for r in step.emitted] == [1]
    assert engine.abort(2) is None  # once only
    assert engine.kv_used_blocks == engine.get(1).blocks  # type: ignore[union-attr]


def test_requests_that_can_never_fit_are_refused_with_a_reason() -> None:
    engine = Engine(H100)
    assert engine.fits(16_000, 1_000) is not None
    with pytest.raises(ValueError, match="maximum context length"):
        engine.add(Request(1, 16_000, 1_000))
    assert engine.fits(1_000, 100) is None


def test_saturation_is_deterministic_and_trades_latency_for_throughput() -> None:
    shapes = [(200 + (i * 37) % 1500, 20 + (i * 13) % 300) for i in range(600)]
    low, high = saturate(H100, shapes, 8), saturate(H100, shapes, 64)
    assert high.throughput_tokens_per_s > 2 * low.throughput_tokens_per_s
    assert high.ttft_p99_s > low.ttft_p99_s and high.step_mean_s > low.step_mean_s
    assert saturate(H100, shapes, 64) == high
    chosen = largest_concurrency(H100, shapes, low.ttft_p99_s * 1.01, candidates=(64, 8, 2))
    assert chosen.concurrency == 8


shapes = st.tuples(st.integers(1, 3000), st.integers(1, 400))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(shapes, st.floats(0, 2), st.booleans(), st.integers(0, 2)), max_size=40),
    st.integers(64, 1024),
    st.sampled_from(["fcfs", "priority"]),
)
def test_the_kv_cache_is_never_overfilled_and_every_request_ends_once(
    requests: list[tuple[tuple[int, int], float, bool, int]],
    kv_blocks: int,
    policy: str,
) -> None:
    model = TimingModel(
        name="prop",
        step_overhead_s=5e-3,
        per_token_s=4e-5,
        per_context_token_s=4e-8,
        kv_cache_tokens=kv_blocks * 16,
        max_num_seqs=16,
        max_batched_tokens=512,
        max_model_len=kv_blocks * 16,
    )
    engine = Engine(model, "priority" if policy == "priority" else "fcfs")
    arrivals = sorted(
        (at, index, shape, abort, priority)
        for index, (shape, at, abort, priority) in enumerate(requests)
    )
    ended: dict[int, str] = {}
    added: dict[int, Request] = {}
    now, position, batch = 0.0, 0, None
    while position < len(arrivals) or engine.has_work:
        if batch is None:
            if not engine.has_work:
                now = max(now, arrivals[position][0])
            while position < len(arrivals) and arrivals[position][0] <= now:
                _, index, (prompt, output), abort, priority = arrivals[position]
                position += 1
                if engine.fits(prompt, output) is not None:
                    continue
                added[index] = Request(index, prompt, output, priority=priority)
                engine.add(added[index])
                if abort and index % 2:  # some leave while queued or running
                    engine.abort(index)
                    ended[index] = "aborted"
            batch = engine.schedule(now)
            if batch is None:
                continue
        assert engine.kv_used_blocks <= model.kv_blocks
        assert engine.free_blocks == model.kv_blocks - sum(r.blocks for r in engine.running)
        assert len(engine.running) <= model.max_num_seqs
        assert batch.tokens <= model.max_batched_tokens
        now = batch.ends
        step = engine.complete(batch)
        batch = None
        for request in step.finished:
            assert request.id not in ended
            ended[request.id] = "finished"
            assert request.generated == request.output_tokens
    assert set(ended) == set(added)
    assert engine.kv_used_blocks == 0 and not engine.running
