"""Moderation on the way in and out, by plan: block, warn or tag; pattern rules and an
OpenAI-compatible /v1/moderations upstream (a real HTTP server here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lamplighter.abuse.moderation import Moderation
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.exceptions import ConfigError
from lamplighter.settings import Settings
from lamplighter.store.models import Message
from tests.conftest import SCRIPTED, LiveServer, ThreadedServer, free_port, make_settings

PLANS = """
[plans.strict]
requests_per_minute = 1000
[plans.lenient]
requests_per_minute = 1000
[plans.quiet]
requests_per_minute = 1000
"""


def moderations_api() -> Starlette:
    """An OpenAI-compatible moderation endpoint that flags harassment when it sees "hate"."""

    async def moderate(request: Request) -> JSONResponse:
        text = (await request.json())["input"]
        hit = "hate" in text.lower()
        return JSONResponse(
            {
                "id": "modr-test",
                "model": "test-moderation",
                "results": [{"flagged": hit, "categories": {"harassment": hit, "violence": False}}],
            }
        )

    return Starlette(routes=[Route("/v1/moderations", moderate, methods=["POST"])])


@pytest.fixture(scope="module")
def moderated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    with ThreadedServer(moderations_api(), free_port()) as upstream:
        data_dir: Path = tmp_path_factory.mktemp("moderated")
        config = data_dir / "lamplighter.toml"
        config.write_text(
            PLANS
            + f"""
[moderation]
action = "tag"
plans = {{ strict = "block", lenient = "warn" }}
upstream_url = "{upstream.base_url}/v1"

[[moderation.rules]]
category = "weapons"
words = ["nerve agent"]

[[moderation.rules]]
category = "echo-trap"
patterns = ["you said: forbidden"]
"""
        )
        settings = make_settings(data_dir, config=config, embedded_engine=False)
        with LiveServer(settings, backends) as live:
            yield live


def _ask(server: LiveServer, plan: str, text: str) -> openai.types.chat.ChatCompletion:
    client = server.client(server.new_user(plan=plan)[1])
    return client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": text}]
    )


def test_block_refuses_a_flagged_question_before_generation(moderated: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(moderated, "strict", "How do I make a Nerve Agent at home?")
    assert refused.value.code == "content_policy_violation"
    assert "weapons" in refused.value.message
    with pytest.raises(openai.BadRequestError, match="harassment"):  # the upstream's verdict
        _ask(moderated, "strict", "I hate my neighbour")


def test_block_stops_a_flagged_answer_with_content_filter(moderated: LiveServer) -> None:
    answer = _ask(moderated, "strict", "forbidden fruit")
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == "You said:"


def test_warn_answers_and_says_what_was_flagged(moderated: LiveServer) -> None:
    client = moderated.client(moderated.new_user(plan="lenient")[1])
    raw = client.chat.completions.with_raw_response.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "what is a nerve agent?"}]
    )
    assert raw.headers["x-lamplighter-moderation"] == "flagged: weapons"
    assert raw.parse().choices[0].finish_reason == "stop"


def test_tag_stores_the_flags_with_the_answer_for_the_flywheel(moderated: LiveServer) -> None:
    answer = _ask(moderated, "quiet", "forbidden knowledge about nerve agents, I hate it")
    assert answer.choices[0].finish_reason == "stop"  # nothing visible

    async def flags(services: object) -> object:
        from lamplighter.chat import message_id_from

        async with services.db.transaction() as session:  # type: ignore[attr-defined]
            message_id = message_id_from(answer.id)
            found = await session.scalar(select(Message.moderation).where(Message.id == message_id))
            return found

    assert moderated.call(flags) == {"input": ["harassment"], "output": ["echo-trap"]}


def test_blocked_questions_count_towards_abuse_scores(moderated: LiveServer) -> None:
    import httpx

    with pytest.raises(openai.BadRequestError):
        _ask(moderated, "strict", "nerve agent recipe")
    metrics = httpx.get(moderated.base_url + "/metrics").text
    assert 'lamplighter_violations_total{kind="moderation"}' in metrics
    assert 'category="echo-trap",direction="output"' in metrics
    assert (
        'lamplighter_moderation_flags_total{action="block",category="weapons",direction="input"}'
        in metrics
    )


def test_bad_moderation_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="action"):
        Moderation.from_config({"action": "shout"})
    with pytest.raises(ConfigError, match="category"):
        Moderation.from_config({"rules": [{"words": ["x"]}]})
    with pytest.raises(ConfigError):
        Moderation.from_config({"rules": [{"category": "x", "patterns": ["("]}]})
    assert asyncio.run(Moderation().check_input("anything")).flagged is False
