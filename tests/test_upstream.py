"""An OpenAI-compatible upstream as a backend. The upstream here is another Lamplighter, which
speaks the same protocol as vLLM and friends and lets the test look inside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lamplighter.engines.base import Backend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.exceptions import ConfigError
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.test_streams import read_then_hang_up, settled, wait_until


@pytest.fixture
def gateway(server: LiveServer, tmp_path: Path) -> Iterator[LiveServer]:
    _, key = server.new_user(plan="roomy")
    config = UpstreamConfig(
        name="upstream", url=server.base_url + "/v1", models=(SCRIPTED,), capacity=4, api_key=key
    )

    async def backends(_: Settings) -> list[Backend]:
        return [UpstreamBackend(config)]

    (tmp_path / "c.toml").write_text(ROOMY_PLAN)
    with LiveServer(make_settings(tmp_path, config=tmp_path / "c.toml"), backends) as live:
        yield live
        live.close_clients()


def test_answers_and_usage_come_from_the_upstream(gateway: LiveServer) -> None:
    _, key = gateway.new_user(plan="roomy")
    client = gateway.client(key)
    answer = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "relay this please"}]
    )
    assert answer.choices[0].message.content == "You said: relay this please"
    assert answer.usage is not None
    # The upstream's count (its own tokenizer: words here), not the gateway's estimate.
    assert answer.usage.prompt_tokens == 4
    assert answer.usage.completion_tokens == 5
    stream = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "and stream it"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "You said: and stream it"
    )


def test_a_client_that_leaves_cuts_the_upstream_generation_too(
    server: LiveServer, gateway: LiveServer
) -> None:
    _, key = gateway.new_user(plan="roomy")
    body = {"model": SCRIPTED, "messages": [{"role": "user", "content": "word " * 2000}]}
    completion_id, seen = read_then_hang_up(gateway, key, body, chunks=3)
    message, usage = wait_until(lambda: settled(gateway, completion_id))
    assert message.status == "cut" and message.content.startswith(seen)
    assert usage.completion_tokens < 2000

    async def upstream_answers(services):  # type: ignore[no-untyped-def]
        from sqlalchemy import select

        from lamplighter.store.models import Message

        async with services.db.transaction() as session:
            rows = await session.execute(
                select(Message.status).where(
                    Message.role == "assistant", Message.content.startswith("You said: word word")
                )
            )
            return [status for (status,) in rows]

    # The upstream saw the disconnect and stopped as well.
    assert wait_until(lambda: "cut" in server.call(upstream_answers) or None)


def test_backend_tables_are_checked() -> None:
    with pytest.raises(ConfigError):
        UpstreamConfig.from_table({"name": "x", "url": "http://h/v1"})
    with pytest.raises(ConfigError):
        UpstreamConfig.from_table({"name": "x", "url": "http://h/v1", "models": [], "capacity": 1})
    config = UpstreamConfig.from_table(
        {"name": "gpu", "url": "http://h:8000/v1/", "models": ["m"], "capacity": 32}
    )
    assert (config.url, config.capacity, config.n_ctx) == ("http://h:8000/v1", 32, 8192)
