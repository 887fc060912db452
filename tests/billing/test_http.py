"""Billing over HTTP against a real server: Stripe's webhook with real signatures (valid,
tampered, wrong secret, too old, replayed), Checkout and plan changes sent to a local stand-in
for Stripe's API (no network in tests), admin grants and teams, and the statement as CSV."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx

from lamplighter.billing.subscriptions import add_period
from lamplighter.store.models import utcnow
from tests.billing.conftest import user_id_of, webhook
from tests.billing.factories import checkout_completed, signed, subscription_event
from tests.billing.fake_stripe import FakeStripe
from tests.conftest import SCRIPTED, LiveServer, ThreadedServer


def _post(server: LiveServer, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        server.base_url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _ask(server: LiveServer, key: str) -> httpx.Response:
    answer = _post(
        server,
        "/v1/chat/completions",
        key,
        {"model": SCRIPTED, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert answer.status_code == 200, answer.text
    return answer


def test_the_webhook_refuses_what_stripe_did_not_sign_and_acknowledges_replays(
    live: LiveServer,
) -> None:
    email, key = live.new_user()
    subject, ref = f"user:{user_id_of(live, email)}", f"sub_{uuid.uuid4().hex[:14]}"
    event = checkout_completed(subject=subject, plan="silver", subscription=ref, created=utcnow())
    payload, header = signed(event)
    tampered = payload.replace(b'"silver"', b'"gold"')
    for body, sent in (
        (tampered, header),
        (payload, signed(event, secret="whsec_wrong")[1]),
        (payload, signed(event, at=int(time.time()) - 301)[1]),
        (payload, None),
    ):
        refused = webhook(live, body, sent)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_signature"
    assert _ask(live, key).headers["x-ratelimit-limit-requests"] == "20"  # still free
    accepted = webhook(live, payload, header)
    assert accepted.status_code == 200 and accepted.json()["outcome"] == "applied"
    assert _ask(live, key).headers["x-ratelimit-limit-requests"] == "60"  # silver, at once
    # Stripe sends an event again when it doubts it arrived: acknowledged, applied once.
    again = webhook(live, *signed(event))
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    unknown = webhook(live, *signed({**event, "id": "evt_other", "type": "charge.refunded"}))
    assert unknown.status_code == 200 and unknown.json()["outcome"] == "ignored"


def test_checkout_and_plan_changes_are_sent_to_stripe_form_encoded(
    live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    email, key = live.new_user()
    user_id = user_id_of(live, email)
    started = _post(live, "/api/billing/checkout", key, {"plan": "silver", "period": "year"})
    assert started.status_code == 200, started.text
    assert started.json()["url"].startswith("https://checkout.stripe.test/")
    form = fake.sent("/v1/checkout/sessions")[-1]
    assert form["mode"] == "subscription"
    assert form["line_items[0][price_data][unit_amount]"] == "20000"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][price_data][recurring][interval]"] == "year"
    assert form["line_items[0][quantity]"] == "1"
    assert form["subscription_data[metadata][subject]"] == f"user:{user_id}"
    assert form["subscription_data[metadata][plan]"] == "silver"
    assert form["customer_email"] == email
    assert form["success_url"].startswith(live.base_url)
    # Stripe reports the subscription; the person upgrades from the page: Stripe is told
    # (charged now, prorated) and the very next request has the new plan.
    ref = f"sub_{uuid.uuid4().hex[:14]}"
    now = utcnow()
    created = subscription_event(
        "created", subject=f"user:{user_id}", plan="silver", subscription=ref, created=now,
        period_end=add_period(now, "year"), period="year",
    )  # fmt: skip
    assert webhook(live, *signed(created)).json()["outcome"] == "applied"
    again = _post(live, "/api/billing/checkout", key, {"plan": "gold"})
    assert again.status_code == 409
    upgraded = _post(live, "/api/billing/plan", key, {"plan": "gold"})
    assert upgraded.status_code == 400, upgraded.text  # gold is not sold by the year
    live.call(lambda s: s.plans.put("gold", {"yearly_price": 50000}))
    upgraded = _post(live, "/api/billing/plan", key, {"plan": "gold"})
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["plan"] == "gold"
    price = fake.sent("/v1/prices")[-1]
    assert (price["unit_amount"], price["metadata[plan]"]) == ("50000", "gold")
    change = fake.sent(f"/v1/subscriptions/{ref}")[-1]
    assert change["proration_behavior"] == "always_invoice"
    assert change["items[0][id]"] == f"si_{ref}" and change["items[0][price]"].startswith("price_")
    assert _ask(live, key).headers["x-ratelimit-limit-requests"] == "300"
    # A downgrade is billed from the renewal and applies at the period end.
    down = _post(live, "/api/billing/plan", key, {"plan": "silver"})
    assert down.json()["pending_plan"] == "silver" and down.json()["plan"] == "gold"
    assert fake.sent(f"/v1/subscriptions/{ref}")[-1]["proration_behavior"] == "none"
    assert _ask(live, key).headers["x-ratelimit-limit-requests"] == "300"
    canceled = _post(live, "/api/billing/cancel", key, {})
    assert canceled.json()["status"] == "canceling"
    assert fake.sent(f"/v1/subscriptions/{ref}")[-1]["cancel_at_period_end"] == "true"
    overview = httpx.get(
        live.base_url + "/api/billing", headers={"authorization": f"Bearer {key}"}
    ).json()
    assert overview["plan"] == "gold" and overview["subscription"]["status"] == "canceling"
    assert {p["name"] for p in overview["plans"]} >= {"bronze", "silver", "gold"}


def test_admins_grant_plans_to_teams_and_export_statements(live: LiveServer) -> None:
    _, admin = live.new_user(admin=True)
    owner, owner_key = live.new_user()
    member, _ = live.new_user()
    name = f"team-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"Bearer {admin}"}
    made = httpx.post(
        f"{live.base_url}/api/admin/teams", json={"name": name, "owner": owner}, headers=headers
    )
    assert made.status_code == 200, made.text
    joined = httpx.put(f"{live.base_url}/api/admin/teams/{name}/members/{member}", headers=headers)
    assert [m["email"] for m in joined.json()["members"]] == [owner, member]
    until = (utcnow() + timedelta(days=30)).isoformat()
    granted = httpx.post(
        f"{live.base_url}/api/admin/billing/grants",
        json={"team": name, "plan": "gold", "until": until, "seats": 2},
        headers=headers,
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["provider"] == "manual" and granted.json()["seats"] == 2
    usage = _ask(live, owner_key).json()["usage"]
    assert _ask(live, owner_key).headers["x-ratelimit-limit-requests"] == "300"
    bad = httpx.post(
        f"{live.base_url}/api/admin/billing/grants",
        json={"team": name, "plan": "gold"},
        headers=headers,
    )
    assert bad.status_code == 400
    month = utcnow().strftime("%Y-%m")
    exported = httpx.get(
        f"{live.base_url}/api/admin/billing/statement",
        params={"period": month, "team": name},
        headers=headers,
    )
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["email"], r["plan"], r["team"]) for r in rows] == [(owner, "gold", name)]
    assert int(rows[0]["requests"]) == 2
    assert int(rows[0]["total_tokens"]) == 2 * usage["total_tokens"]
    assert (rows[0]["plan_price"], rows[0]["currency"]) == ("5000", "usd")
    audit = httpx.get(f"{live.base_url}/api/admin/audit", headers=headers).json()["data"]
    assert {"billing.grant", "team.create", "team.add"} <= {entry["action"] for entry in audit}
    # The owner sees the team's subscription; a grant is changed by admins, not by them.
    overview = httpx.get(
        live.base_url + "/api/billing", headers={"authorization": f"Bearer {owner_key}"}
    ).json()
    assert overview["team"]["seat"] is True and overview["team"]["subscription"]["plan"] == "gold"
    refused = _post(live, "/api/billing/plan", owner_key, {"plan": "silver", "team": name})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "granted_plan"
    assert json.loads(httpx.get(f"{live.base_url}/api/admin/teams", headers=headers).text)["data"]
