"""The real-time check of admission control: the real gateway in front of ``sim-backend`` over
loopback, against the same simulated GPU reached directly (a plain proxy, first come first
served), under the same surge. The assertions are about the ordering of outcomes, not timings:
behind Lamplighter nobody is left to time out silently and the paying plan is served first.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.settings import Settings
from lamplighter.simulation.gpu import profile
from lamplighter.simulation.server import SimSettings, create_app
from tests.conftest import LiveServer, ThreadedServer, free_port, make_settings

SIM_MODEL = "sim-llama-3-8b-instruct"
SLOTS = 4
# The simulated GPU runs ten times slower than the real one so that a surge fits in a few
# seconds of a 2-core machine: 4 sequences at ~70 ms a step.
TIME_SCALE = 10.0
# A person gives up after this long without a first token: a second and a half after the team
# plan's queue patience, time for a request let in at the last moment to reach its first token
# with the other test worker's browser on the same two cores.
USERS_PATIENCE = 4.0
PLANS = """
[plans.free]
priority = 2
queue_patience_s = 1.0
requests_per_minute = 10000
tokens_per_minute = 10000000
concurrent_streams = 100
cache_ttl_s = 0

[plans.team]
priority = 0
queue_patience_s = 2.5
requests_per_minute = 10000
tokens_per_minute = 10000000
concurrent_streams = 100
cache_ttl_s = 0
"""


@dataclass
class Outcome:
    plan: str
    status: str  # answered | refused | silent_timeout
    ttft: float | None = None


@pytest.fixture
def sim() -> Iterator[ThreadedServer]:
    settings = SimSettings(
        timing=profile("h100", max_num_seqs=SLOTS), time_scale=TIME_SCALE, seed=7
    )
    with ThreadedServer(create_app(settings), free_port()) as server:
        yield server


@pytest.fixture
def gateway(sim: ThreadedServer, tmp_path: Path) -> Iterator[LiveServer]:
    config = UpstreamConfig(
        name="sim", url=sim.base_url + "/v1", models=(SIM_MODEL,), capacity=SLOTS, n_ctx=16384
    )

    async def backends(_: Settings) -> list[Backend]:
        return [UpstreamBackend(config)]

    (tmp_path / "plans.toml").write_text(PLANS)
    with LiveServer(make_settings(tmp_path, config=tmp_path / "plans.toml"), backends) as live:
        yield live


async def surge(base_url: str, keys: dict[str, str], plans: list[str]) -> list[Outcome]:
    """Offer about three times what the GPU serves: one request every ~60 ms, each asking for
    20 tokens, with every user giving up after USERS_PATIENCE seconds without a first token."""

    async def one(client: httpx.AsyncClient, delay: float, plan: str) -> Outcome:
        await asyncio.sleep(delay)
        body = {
            "model": SIM_MODEL,
            "messages": [{"role": "user", "content": "Tell me something."}],
            "max_tokens": 20,
            "stream": True,
        }
        started = time.monotonic()
        first: float | None = None
        headers = {"authorization": f"Bearer {keys[plan]}"} if keys[plan] else {}
        try:
            async with (
                asyncio.timeout(USERS_PATIENCE) as patience,
                client.stream(
                    "POST", base_url + "/v1/chat/completions", json=body, headers=headers
                ) as response,
            ):
                if response.status_code in (429, 503):
                    return Outcome(plan, "refused")
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if first is None and '"content":"' in line and '"content":""' not in line:
                        first = time.monotonic() - started
                        patience.reschedule(None)  # an answer has begun: read it all
        except TimeoutError:
            return Outcome(plan, "silent_timeout")
        return Outcome(plan, "answered" if first is not None else "silent_timeout", first)

    # One client (one connection each) for everyone: making a client costs ~60 ms of CPU here
    # (its TLS context), which in this process would slow the simulated GPU and the gateway.
    limits = httpx.Limits(max_connections=len(plans), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(one(client, i * 0.06, p) for i, p in enumerate(plans)))


async def idle(base_url: str) -> None:
    """Wait until the simulated GPU runs and queues nothing, by its vLLM metrics."""
    busy = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\} ([0-9.]+)$", re.M)
    async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(30):
        while True:
            text = (await client.get(base_url + "/metrics")).text
            counts = [float(value) for _, value in busy.findall(text)]
            if len(counts) == 2 and not any(counts):
                return
            await asyncio.sleep(0.05)


def summary(outcomes: list[Outcome], plan: str) -> dict[str, float]:
    mine = [o for o in outcomes if o.plan == plan]
    return {
        "answered": sum(o.status == "answered" for o in mine) / len(mine),
        "silent": sum(o.status == "silent_timeout" for o in mine),
    }


async def test_behind_lamplighter_nobody_times_out_silently_and_team_goes_first(
    sim: ThreadedServer, gateway: LiveServer
) -> None:
    rng = random.Random(3)
    plans = ["team" if rng.random() < 0.2 else "free" for _ in range(60)]
    keys = {plan: gateway.new_user(plan=plan)[1] for plan in ("free", "team")}
    direct = await surge(sim.base_url, {"free": "", "team": ""}, plans)
    await idle(sim.base_url)  # what the people who gave up left on the simulated GPU is gone
    ours = await surge(gateway.base_url, keys, plans)

    fifo_free, fifo_team = summary(direct, "free"), summary(direct, "team")
    our_free, our_team = summary(ours, "free"), summary(ours, "team")
    # A plain proxy leaves people waiting until they give up; Lamplighter answers or refuses.
    assert fifo_free["silent"] + fifo_team["silent"] > 0
    assert our_free["silent"] + our_team["silent"] == 0
    # The paying plan is served at least as well as behind the plain proxy, and better than free.
    assert our_team["answered"] >= fifo_team["answered"]
    assert our_team["answered"] > our_free["answered"]
    # Nine in ten on a quiet machine; in CI the other worker's tests share these two cores, the
    # simulated GPU steps more slowly and the gateway rightly refuses some team requests it
    # could not start within their patience (three in four once).
    assert our_team["answered"] >= 0.7
