"""What an audit with the official ``openai`` SDK found, each as the SDK's user sees it: a
deleted background response stops, models a plan cannot use are not listed, the current SDK's
chat parameters are accepted, errors name the Responses API's fields, logprobs join to the
content, and the smaller shapes (usage's cached tokens, model cards, a retrieved response's
previous id)."""

from __future__ import annotations

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
