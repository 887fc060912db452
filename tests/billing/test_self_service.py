"""What a subscriber does from the billing page or the API, against a real server whose Stripe
is a local stand-in: each click does what it says in Stripe, once, however often it is sent."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from lamplighter.billing.subscriptions import add_period
from lamplighter.store.models import utcnow
from tests.billing.conftest import billing_server, user_id_of, webhook
from tests.billing.factories import signed, subscription_event
from tests.billing.fake_stripe import FakeStripe
from tests.conftest import LiveServer, ThreadedServer


def _post(server: LiveServer, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        server.base_url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _subscribed(server: LiveServer, plan: str) -> tuple[str, str, str]:
    """A new person with a Stripe subscription to ``plan``: (email, key, subscription ref)."""
    email, key = server.new_user()
    ref, now = f"sub_{uuid.uuid4().hex[:14]}", utcnow()
    created = subscription_event(
        "created", subject=f"user:{user_id_of(server, email)}", plan=plan, subscription=ref,
        created=now, period_end=add_period(now, "month"),
    )  # fmt: skip
    assert webhook(server, *signed(created)).json()["outcome"] == "applied"
    return email, key, ref


def test_cancelling_twice_keeps_the_paid_period_and_tells_stripe_once(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    _, key, ref = _subscribed(live, "silver")
    first = _post(live, "/api/billing/cancel", key, {})
    # A second tab with the old dialog, or a retry, cancels again.
    second = _post(live, "/api/billing/cancel", key, {})
    assert first.status_code == second.status_code == 200, second.text
    assert second.json()["status"] == "canceling"
    assert second.json()["period_end"] == first.json()["period_end"]
    calls = [(method, form) for method, at, form in fake.requests if at.endswith(ref)]
    assert calls == [("POST", {"cancel_at_period_end": "true"})]
    resumed = _post(live, "/api/billing/resume", key, {})
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"


def test_checkout_returns_people_to_the_public_address_whatever_the_host_header(
    tmp_path: Path, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    public = "https://lamplighter.example"
    with billing_server(tmp_path, stripe_api, public_url=public) as proxied:
        _, key = proxied.new_user()
        answer = httpx.post(
            proxied.base_url + "/api/billing/checkout",
            json={"plan": "silver"},
            headers={"authorization": f"Bearer {key}", "host": "attacker.example"},
        )
        assert answer.status_code == 200, answer.text
    form = fake.sent("/v1/checkout/sessions")[-1]
    assert form["success_url"] == f"{public}/?billing=success"
    assert form["cancel_url"] == f"{public}/?billing=canceled"
