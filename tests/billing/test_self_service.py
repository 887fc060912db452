"""What a subscriber does from the billing page or the API, against a real server whose Stripe
is a local stand-in: each click does what it says in Stripe, once, however often it is sent."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from lamplighter.billing.subscriptions import add_period
from lamplighter.store.billing import Teams
from lamplighter.store.models import utcnow
from tests.billing.conftest import billing_server, user_id_of, webhook
from tests.billing.factories import checkout_completed, signed, subscription_event
from tests.billing.fake_stripe import FakeStripe
from tests.conftest import SCRIPTED, LiveServer, ThreadedServer


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


def test_a_double_clicked_checkout_opens_one_stripe_session(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    _, key = live.new_user()
    first = _post(live, "/api/billing/checkout", key, {"plan": "silver"})
    second = _post(live, "/api/billing/checkout", key, {"plan": "silver"})
    assert first.status_code == second.status_code == 200, second.text
    assert second.json() == first.json()
    assert fake.idempotency_keys[-1] and fake.idempotency_keys[-1] == fake.idempotency_keys[-2]
    # Another plan is another session (the person changed their mind).
    other = _post(live, "/api/billing/checkout", key, {"plan": "gold"})
    assert other.json()["id"] != first.json()["id"]


def test_a_second_paid_subscription_is_cancelled_in_stripe_and_written_to_the_audit_log(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    _, admin = live.new_user(admin=True)
    email, key, kept = _subscribed(live, "silver")
    # Two tabs' checkouts, both paid: the second subscription arrives while the first is live.
    extra, now = f"sub_{uuid.uuid4().hex[:14]}", utcnow()
    subject = f"user:{user_id_of(live, email)}"
    paid = checkout_completed(subject=subject, plan="gold", subscription=extra, created=now)
    assert webhook(live, *signed(paid)).json()["outcome"] == "refused"
    assert ("DELETE", f"/v1/subscriptions/{extra}", {}) in fake.requests
    overview = httpx.get(
        live.base_url + "/api/billing", headers={"authorization": f"Bearer {key}"}
    ).json()
    assert overview["plan"] == "silver" and overview["subscription"]["plan"] == "silver"
    # Stripe's own word of the subscription and of its deletion change nothing more.
    for kind in ("created", "deleted"):
        event = subscription_event(
            kind, subject=subject, plan="gold", subscription=extra, created=now,
            period_end=add_period(now, "month"),
        )  # fmt: skip
        assert webhook(live, *signed(event)).json()["outcome"] == "unchanged"
    assert [m for m, at, _ in fake.requests if at.endswith(extra)] == ["DELETE"]
    assert not [at for _, at, _ in fake.requests if at.endswith(kept)]
    audit = httpx.get(
        f"{live.base_url}/api/admin/audit",
        params={"limit": 1000},
        headers={"authorization": f"Bearer {admin}"},
    ).json()["data"]
    refused = [e for e in audit if e["action"] == "billing.refused" and e["target"] == email]
    assert refused and refused[0]["actor"] == "stripe"
    assert refused[0]["details"] == {
        "subscription": extra,
        "plan": "gold",
        "kept": kept,
        "cancelled_in_stripe": True,
    }


def test_taking_a_downgrade_back_is_not_charged_and_an_upgrade_after_one_only_the_difference(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    _, key, ref = _subscribed(live, "silver")

    def changes() -> list[tuple[str, str]]:
        sent = fake.sent(f"/v1/subscriptions/{ref}")
        return [(f["metadata[plan]"], f["proration_behavior"]) for f in sent if f]

    for plan in ("bronze", "silver", "bronze", "gold"):
        answer = _post(live, "/api/billing/plan", key, {"plan": plan})
        assert answer.status_code == 200, answer.text
    # Bronze waits for the renewal; back to silver, already paid for: nothing to charge. Gold
    # after a pending bronze: Stripe goes back to silver's price first, so the prorated charge
    # is gold minus silver, what the period was paid at, not gold minus bronze.
    assert changes() == [
        ("bronze", "none"),
        ("silver", "none"),
        ("bronze", "none"),
        ("silver", "none"),
        ("gold", "always_invoice"),
    ]
    assert answer.json()["plan"] == "gold" and answer.json()["pending_plan"] is None


def test_what_subscribers_stripe_and_the_sweep_change_is_in_the_audit_log(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    _, admin = live.new_user(admin=True)
    email, key = live.new_user()
    assert _post(live, "/api/billing/checkout", key, {"plan": "bronze"}).status_code == 200
    ref, now = f"sub_{uuid.uuid4().hex[:14]}", utcnow()
    subject = f"user:{user_id_of(live, email)}"
    paid = checkout_completed(subject=subject, plan="bronze", subscription=ref, created=now)
    assert webhook(live, *signed(paid)).json()["outcome"] == "applied"
    for path, body in (
        ("/api/billing/plan", {"plan": "silver"}),
        ("/api/billing/cancel", {}),
        ("/api/billing/resume", {}),
    ):
        assert _post(live, path, key, body).status_code == 200
    # The period ends unpaid: the server's sweep takes the plan back.
    end = add_period(now, "month")
    live.call(lambda s: s.billing.sweep(end + timedelta(days=8)))
    audit = httpx.get(
        f"{live.base_url}/api/admin/audit",
        params={"limit": 1000},
        headers={"authorization": f"Bearer {admin}"},
    ).json()["data"]
    mine = [(e["actor"], e["action"], e["details"]) for e in audit[::-1] if e["target"] == email]
    checkout = {"plan": "bronze", "period": "month", "seats": 1}
    assert [(actor, action) for actor, action, _ in mine] == [
        (email, "billing.checkout"),
        ("stripe", "billing.plan"),
        (email, "billing.plan"),
        (email, "billing.change"),
        (email, "billing.cancel"),
        (email, "billing.resume"),
        ("system", "billing.plan"),
    ]
    assert checkout.items() <= mine[0][2].items() and mine[0][2]["session"].startswith("cs_")
    assert [details for _, action, details in mine if action == "billing.plan"] == [
        {"from": "free", "to": "bronze"},
        {"from": "bronze", "to": "silver"},
        {"from": "silver", "to": "free"},
    ]
    assert mine[3][2] == {"plan": "silver", "from": "bronze"}


def _team_id(server: LiveServer, name: str) -> str:
    async def find(services: Any) -> str:
        async with services.db.transaction() as session:
            team = await Teams(session).by_name(name)
            return str(team.id)

    return server.call(find)


def test_a_team_owner_buys_a_seat_when_the_team_is_full(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    _, admin = live.new_user(admin=True)
    owner, owner_key = live.new_user()
    newcomer, newcomer_key = live.new_user()
    name = f"team-{uuid.uuid4().hex[:8]}"
    as_admin = {"authorization": f"Bearer {admin}"}
    made = httpx.post(
        f"{live.base_url}/api/admin/teams", json={"name": name, "owner": owner}, headers=as_admin
    )
    assert made.status_code == 200, made.text
    ref, now = f"sub_{uuid.uuid4().hex[:14]}", utcnow()
    paid = checkout_completed(
        subject=f"team:{_team_id(live, name)}", plan="gold", subscription=ref, created=now
    )
    assert webhook(live, *signed(paid)).json()["outcome"] == "applied"
    join = f"{live.base_url}/api/admin/teams/{name}/members/{newcomer}"
    full = httpx.put(join, headers=as_admin)
    assert full.status_code == 409 and full.json()["error"]["code"] == "no_free_seat"
    assert '"seats": 2' in full.json()["error"]["message"]
    assert "/api/billing/plan" in full.json()["error"]["message"]
    # Only the owner may change the seats; one seat is all a person's own subscription has.
    refused = _post(live, "/api/billing/plan", newcomer_key, {"team": name, "seats": 2})
    assert refused.status_code == 404
    assert _post(live, "/api/billing/plan", owner_key, {"seats": 2}).status_code == 400
    bought = _post(live, "/api/billing/plan", owner_key, {"team": name, "seats": 2})
    assert bought.status_code == 200, bought.text
    assert bought.json()["seats"] == 2 and bought.json()["plan"] == "gold"
    change = fake.sent(f"/v1/subscriptions/{ref}")[-1]
    assert change["items[0][quantity]"] == "2" and change["items[0][id]"] == f"si_{ref}"
    assert change["proration_behavior"] == "always_invoice"
    joined = httpx.put(join, headers=as_admin)
    assert joined.status_code == 200, joined.text
    assert [m["seat"] for m in joined.json()["members"]] == [True, True]
    asked = _post(
        live,
        "/v1/chat/completions",
        newcomer_key,
        {"model": SCRIPTED, "messages": [{"role": "user", "content": f"seat {name}"}]},
    )
    assert asked.headers["x-ratelimit-limit-requests"] == "300"  # gold, at once


def test_a_subscriber_pays_or_changes_the_card_in_stripes_portal_and_comes_back(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    _, key, _ = _subscribed(live, "silver")
    answer = _post(live, "/api/billing/portal", key, {})
    assert answer.status_code == 200, answer.text
    assert answer.json()["url"].startswith("https://billing.stripe.test/p/session/")
    form = fake.sent("/v1/billing_portal/sessions")[-1]
    assert form == {"customer": "cus_test", "return_url": f"{live.base_url}/?billing=portal"}
    # Nothing to pay online without a subscription, or for one an admin granted.
    _, stranger = live.new_user()
    nothing = _post(live, "/api/billing/portal", stranger, {})
    assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "no_subscription"
