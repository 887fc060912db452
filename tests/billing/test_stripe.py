"""Stripe's side, without a server: signatures checked exactly as Stripe's libraries check them,
events of both API shapes read into the state machine's events, and the form encoding."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from lamplighter.billing.stripe import (
    SignatureInvalid,
    encode,
    sign,
    signature,
    translate,
    verify,
)
from lamplighter.billing.subscriptions import Paid, Snapshot, Terminated
from lamplighter.traffic.plans import Plan
from tests.billing.factories import SECRET, invoice_event, subscription_event

PLANS = {"silver": Plan("silver", monthly_price=2000)}
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_signatures_are_checked_as_stripe_does() -> None:
    payload, now = b'{"id": "evt_1", "type": "invoice.paid"}', int(time.time())
    verify(payload, sign(payload, SECRET, now), SECRET)
    # Several v1 signatures (Stripe sends one per secret while a secret is rolled): any may match.
    rolled = f"t={now},v1={'0' * 64},v1={signature(payload, SECRET, now)},v0=ignored"
    verify(payload, rolled, SECRET)
    refusals = {
        "tampered": (payload.replace(b"paid", b"void"), sign(payload, SECRET, now)),
        "wrong secret": (payload, sign(payload, "whsec_other", now)),
        "too old": (payload, sign(payload, SECRET, now - 301)),
        "no v1": (payload, f"t={now},v0={signature(payload, SECRET, now)}"),
        "no timestamp": (payload, f"v1={signature(payload, SECRET, now)}"),
        "missing": (payload, ""),
    }
    for name, (body, header) in refusals.items():
        with pytest.raises(SignatureInvalid):
            verify(body, header, SECRET)
            pytest.fail(f"{name} was accepted")
    verify(payload, sign(payload, SECRET, now - 299), SECRET)  # within the 300 s tolerance


def test_events_of_old_and_new_api_versions_are_read_alike() -> None:
    end = T0 + timedelta(days=30)
    updated = subscription_event(
        "updated", subject="user:x", plan="silver", subscription="sub_1", created=T0, period_end=end
    )
    read = translate(updated, PLANS)
    assert read.ref == "sub_1" and read.subject == "user:x" and read.customer == "cus_test"
    assert read.event == Snapshot(T0, "active", "silver", 1, end)
    # A price that names no plan of ours (made in Stripe's dashboard): the plan is kept.
    obj = updated["data"]["object"]
    obj["metadata"] = {}
    assert isinstance(read := translate(updated, PLANS).event, Snapshot) and read.plan == ""
    obj["items"]["data"][0]["price"]["metadata"] = {"plan": "silver"}
    assert isinstance(read := translate(updated, PLANS).event, Snapshot) and read.plan == "silver"
    deleted = translate({**updated, "type": "customer.subscription.deleted"}, PLANS)
    assert deleted.event == Terminated(T0)
    assert isinstance(deleted.creates, Snapshot) and deleted.creates.status == "canceled"
    # Invoices: "subscription" on the invoice (before 2025-03-31), or under "parent".
    paid = invoice_event("paid", subscription="sub_1", created=T0, period_end=end)
    assert translate(paid, PLANS).event == Paid(T0, end)
    newer = paid["data"]["object"]
    newer["parent"] = {"subscription_details": {"subscription": newer.pop("subscription")}}
    assert translate(paid, PLANS).ref == "sub_1"
    assert translate({**paid, "type": "charge.refunded"}, PLANS).event is None


def test_requests_are_form_encoded_with_brackets() -> None:
    params = {
        "mode": "subscription",
        "line_items": [{"quantity": 2, "price_data": {"unit_amount": 500}}],
        "metadata": {"plan": "silver"},
        "cancel_at_period_end": True,
        "customer": None,
    }
    form = dict(encode(params))
    assert form == {
        "mode": "subscription",
        "line_items[0][quantity]": "2",
        "line_items[0][price_data][unit_amount]": "500",
        "metadata[plan]": "silver",
        "cancel_at_period_end": "true",
    }
