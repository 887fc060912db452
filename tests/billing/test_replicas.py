"""An upgrade binds the very next request on another replica, mid-conversation: two gateways
over one PostgreSQL database and the real Redis, Stripe's webhook arriving at one of them, the
official ``openai`` client talking to the other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import distinct, func, select

from lamplighter.billing.subscriptions import add_period
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from lamplighter.store.database import Database
from lamplighter.store.models import Message, utcnow
from lamplighter.store.usage import UsageLedger
from tests.billing.conftest import PRICED_TOML, user_id_of, webhook
from tests.billing.factories import SECRET, checkout_completed, signed, subscription_event
from tests.conftest import SCRIPTED, LiveServer, make_settings
from tests.fleet import REDIS_URL


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[LiveServer, LiveServer]]:
    data_dir: Path = tmp_path_factory.mktemp("billing-replicas")
    config = data_dir / "lamplighter.toml"
    config.write_text(PRICED_TOML)

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    def replica() -> LiveServer:
        shared = {
            "database_url": postgres_url,
            "redis_url": REDIS_URL,
            "replicas": 2,
            "embedded_engine": False,
            "stripe_webhook_secret": SECRET,
        }
        return LiveServer(make_settings(data_dir, config=config, **shared), backends)

    with replica() as first, replica() as second:
        yield first, second


def _served(url: str, user_id: str) -> tuple[list[str | None], int]:
    """The plan of each of the user's exchanges, and how many conversations they are in."""

    async def read() -> tuple[list[str | None], int]:
        db = Database(url)
        try:
            async with db.transaction() as session:
                rows = await UsageLedger(session).of_user(uuid.UUID(user_id))
                conversations = await session.scalar(
                    select(func.count(distinct(Message.conversation_id))).where(
                        Message.user_id == uuid.UUID(user_id)
                    )
                )
                return [row.plan for row in rows], int(conversations or 0)
        finally:
            await db.close()

    return asyncio.run(read())


@pytest.mark.postgres
def test_an_upgrade_binds_the_next_request_on_another_replica_mid_conversation(
    replicas: tuple[LiveServer, LiveServer], postgres_url: str
) -> None:
    first, second = replicas
    email, key = first.new_user()
    user_id = user_id_of(first, email)
    subject, ref = f"user:{user_id}", f"sub_{uuid.uuid4().hex[:14]}"
    client = second.client(key)
    messages: list[Any] = [{"role": "user", "content": "Hello, shall we talk?"}]

    def say() -> str:
        """One more turn of the same conversation, on the second replica; its rpm limit."""
        raw = client.chat.completions.with_raw_response.create(model=SCRIPTED, messages=messages)
        answer = raw.parse()
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        messages.append({"role": "user", "content": f"And then? ({len(messages)})"})
        return raw.headers["x-ratelimit-limit-requests"]

    assert say() == "20"  # free
    now = utcnow()
    paid = checkout_completed(subject=subject, plan="silver", subscription=ref, created=now)
    assert webhook(first, *signed(paid)).json()["outcome"] == "applied"
    assert say() == "60"  # silver, at once, on the other replica
    upgraded = subscription_event(
        "updated", subject=subject, plan="gold", subscription=ref, created=now,
        period_end=add_period(now, "month"),
    )  # fmt: skip
    assert webhook(first, *signed(upgraded)).json()["outcome"] == "applied"
    assert say() == "300"  # gold: the very next request, no waiting, no retry
    downgraded = subscription_event(
        "updated", subject=subject, plan="bronze", subscription=ref, created=now,
        period_end=add_period(now, "month"),
    )  # fmt: skip
    assert webhook(first, *signed(downgraded)).json()["outcome"] == "applied"
    assert say() == "300"  # a downgrade waits for the period end
    # The ledger records the plan each exchange was served under, all in one conversation.
    assert _served(postgres_url, user_id) == (["free", "silver", "gold", "gold"], 1)
