"""A program that runs more calls at once than its plan's concurrent streams, through the real
``openai`` SDK, is refused and retried, never banned; a script that sends again without waiting
still is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import PACED, LiveServer, make_settings

# Ten words a question, so each answer takes half a second and the calls overlap.
QUESTION = "one two three four five six seven eight"


@contextmanager
def paced(data_dir: Path, plan: str, pace_s: float) -> Iterator[LiveServer]:
    """A server whose scripted model writes a word every ``pace_s`` seconds, configured by
    ``plan`` (TOML: the plan a test uses); the [abuse] policy is the default."""

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(PACED, pace_s=pace_s)]

    config = data_dir / "lamplighter.toml"
    config.write_text(plan)
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    with LiveServer(settings, backends) as live:
        yield live


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose plan 'four' runs four calls at once."""
    plan = (
        "[plans.four]\nconcurrent_streams = 4\nrequests_per_minute = 1000\n"
        "tokens_per_minute = 1000000\n"
    )
    with paced(tmp_path_factory.mktemp("four"), plan, pace_s=0.05) as live:
        yield live


def _client(
    server: LiveServer, key: str, statuses: list[int], address: str, **kwargs: object
) -> openai.AsyncOpenAI:
    async def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    return openai.AsyncOpenAI(
        base_url=server.base_url + "/v1",
        api_key=key,
        # From an address of its own, so that the address is scored as well as the user.
        default_headers={"x-forwarded-for": address},
        http_client=httpx.AsyncClient(event_hooks={"response": [seen]}, timeout=60),
        **kwargs,  # type: ignore[arg-type]
    )


async def _ask(client: openai.AsyncOpenAI) -> str:
    try:
        await client.chat.completions.create(
            model=PACED, messages=[{"role": "user", "content": QUESTION}], max_tokens=10
        )
    except openai.APIStatusError as error:
        return str(error.status_code)
    return "ok"


def test_the_sdk_retrying_twenty_calls_at_once_is_never_banned(four: LiveServer) -> None:
    """asyncio.gather of 20 calls, twice, on a plan of 4 streams, with the SDK's own 2
    retries: 16 are refused at once, come back when told, and none is ever banned."""
    _, key = four.new_user(plan="four")
    statuses: list[int] = []

    async def program() -> tuple[list[str], str]:
        async with _client(four, key, statuses, "203.0.113.80") as client:
            outcomes = []
            for _ in range(2):
                outcomes += await asyncio.gather(*(_ask(client) for _ in range(20)))
            return outcomes, await _ask(client)

    outcomes, after = asyncio.run(program())
    assert 403 not in statuses, statuses
    assert statuses.count(429) >= 16  # the plan's limit was hit, and the SDK retried
    assert set(outcomes) <= {"ok", "429"} and outcomes.count("ok") >= 16
    assert after == "ok"  # the program goes on: its next call is served


def test_a_script_that_sends_again_without_waiting_is_banned(four: LiveServer) -> None:
    """Twenty loops without retries, each sending again the moment its last call ended, never
    waiting the second each refusal asks for: banned within a few rounds. (Each loop's refusals
    come back in milliseconds, so its next call is early however slow the machine's answers.)"""
    _, key = four.new_user(plan="four")
    statuses: list[int] = []

    async def hammer() -> list[str]:
        seen: list[str] = []
        async with _client(four, key, statuses, "203.0.113.81", max_retries=0) as client:

            async def loop() -> None:
                for _ in range(10):
                    seen.append(await _ask(client))
                    if "403" in seen:
                        return

            await asyncio.gather(*(loop() for _ in range(20)))
        return seen

    assert "403" in asyncio.run(hammer()), statuses
    # The account is banned, from any address.
    banned = httpx.post(
        four.base_url + "/v1/chat/completions",
        json={"model": PACED, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}", "x-forwarded-for": "198.18.0.9"},
    )
    assert banned.status_code == 403
    assert banned.json()["error"]["code"] == "temporarily_banned"
    message = banned.json()["error"]["message"]
    assert "concurrency" in message and "(about 5 min)" in message
    # Every 403 a ban answered is counted with the other refusals, under its plan.
    metrics = httpx.get(four.base_url + "/metrics").text
    assert 'lamplighter_refusals_total{plan="four",reason="temporarily_banned"}' in metrics


def test_a_concurrency_refusal_says_when_one_of_the_callers_answers_should_end(
    tmp_path: Path,
) -> None:
    """Told to come back in a second while its other answer has seconds to run, the SDK spends
    its retries at once and fails; the refusal says when that answer should end instead, from
    how long answers take on its backend and how long this one has run."""
    plan = (
        "[plans.one]\nconcurrent_streams = 1\nrequests_per_minute = 1000\n"
        "tokens_per_minute = 1000000\ncache_ttl_s = 0\n"
    )
    with paced(tmp_path, plan, pace_s=0.002) as live:
        client = live.client(live.new_user(plan="one")[1]).with_options(max_retries=0)
        # 1,500 words at 2 ms each: an answer holds its slot about 3 s.
        asked = [{"role": "user", "content": " ".join(["lamp"] * 1500)}]
        client.chat.completions.create(model=PACED, messages=asked, max_tokens=2000)
        running = client.chat.completions.create(
            model=PACED, messages=asked, max_tokens=2000, stream=True
        )
        next(iter(running))
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(
                model=PACED, messages=[{"role": "user", "content": "and this?"}]
            )
        assert int(refused.value.response.headers["retry-after"]) >= 2
        running.close()
        live.close_clients()
