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
from tests.conftest import PACED, LiveServer


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
