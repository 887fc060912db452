"""A billing service over a real database (SQLite and PostgreSQL), with priced plans of its own
and a clock the tests move; a real server whose Stripe is a local stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamplighter.accounts import AccountService
from lamplighter.billing.service import Billing
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from lamplighter.store.database import Database
from lamplighter.store.models import utcnow
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import DEFAULT_PLANS, Plan
from tests.billing.factories import SECRET
from tests.billing.fake_stripe import SECRET_KEY, FakeStripe
from tests.conftest import SCRIPTED, LiveServer, ThreadedServer, free_port, make_settings

# Plans of the billing tests' own (other tests share the databases): three prices, three limits.
PRICED = {
    "bronze": Plan("bronze", priority=2, requests_per_minute=30, monthly_price=500),
    "silver": Plan(
        "silver", priority=1, requests_per_minute=60, monthly_price=2000, yearly_price=20000
    ),
    "gold": Plan("gold", priority=0, requests_per_minute=300, monthly_price=5000),
}
PRICED_TOML = """
[plans.bronze]
priority = 2
requests_per_minute = 30
monthly_price = 500

[plans.silver]
priority = 1
requests_per_minute = 60
monthly_price = 2000
yearly_price = 20000

[plans.gold]
priority = 0
requests_per_minute = 300
monthly_price = 5000
"""


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Setup:
    billing: Billing
    accounts: AccountService
    clock: Clock
    db: Database


@asynccontextmanager
async def billing_over(url: str) -> AsyncIterator[Setup]:
    db = Database(url)
    plans = PlanBook(db)
    await plans.load({**DEFAULT_PLANS, **PRICED})
    clock = Clock(utcnow().replace(microsecond=0))
    billing = Billing(db, plans, clock=clock, webhook_secret=SECRET)
    try:
        yield Setup(billing, AccountService(db), clock, db)
    finally:
        await db.close()


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[Setup]:
    async with billing_over(database_url) as made:
        yield made


@pytest.fixture
async def sqlite_setup(sqlite_url: str) -> AsyncIterator[Setup]:
    async with billing_over(sqlite_url) as made:
        yield made


def webhook(server: LiveServer, payload: bytes, header: str | None) -> httpx.Response:
    """Deliver a webhook event to ``server`` as Stripe does."""
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["stripe-signature"] = header
    return httpx.post(
        server.base_url + "/api/billing/stripe/webhook", content=payload, headers=headers
    )


def user_id_of(server: LiveServer, email: str) -> str:
    async def find(services: Any) -> str:
        users = await services.accounts.list_users()
        return next(str(u.id) for u in users if u.email == email)

    return server.call(find)


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[tuple[FakeStripe, ThreadedServer]]:
    fake = FakeStripe()
    with ThreadedServer(fake.app, free_port()) as running:
        yield fake, running


@contextmanager
def billing_server(
    data_dir: Path, stripe_api: tuple[FakeStripe, ThreadedServer], **overrides: Any
) -> Iterator[LiveServer]:
    """A real server with the priced plans, whose Stripe is ``stripe_api``."""
    config = data_dir / "lamplighter.toml"
    config.write_text(PRICED_TOML)

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    settings = make_settings(
        data_dir,
        config=config,
        embedded_engine=False,
        stripe_secret_key=SECRET_KEY,
        stripe_webhook_secret=SECRET,
        stripe_api_base=stripe_api[1].base_url,
        **overrides,
    )
    with LiveServer(settings, backends) as server:
        yield server


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> Iterator[LiveServer]:
    with billing_server(tmp_path_factory.mktemp("billing"), stripe_api) as server:
        yield server
