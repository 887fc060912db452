"""Stripe's events as Stripe sends them (the fields Lamplighter reads, in Stripe's shapes), signed
locally with Stripe's scheme: there is no network in the tests, so nothing comes from Stripe."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

from lamplighter.billing.stripe import sign

SECRET = "whsec_test_0123456789abcdef"


def _event(
    kind: str, obj: dict[str, Any], created: datetime, event_id: str | None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(created.timestamp()),
        "type": kind,
        "livemode": False,
        "data": {"object": obj},
    }


def checkout_completed(
    *,
    subject: str,
    plan: str,
    subscription: str,
    created: datetime,
    customer: str = "cus_test",
    period: str = "month",
    seats: int = 1,
    event_id: str | None = None,
) -> dict[str, Any]:
    metadata = {"plan": plan, "period": period, "subject": subject, "seats": str(seats)}
    return _event(
        "checkout.session.completed",
        {
            "id": f"cs_test_{uuid.uuid4().hex[:12]}",
            "object": "checkout.session",
            "mode": "subscription",
            "payment_status": "paid",
            "status": "complete",
            "client_reference_id": subject,
            "customer": customer,
            "subscription": subscription,
            "metadata": metadata,
        },
        created,
        event_id,
    )


def subscription_event(
    kind: str,
    *,
    subject: str,
    plan: str,
    subscription: str,
    created: datetime,
    period_end: datetime,
    status: str = "active",
    cancel_at_period_end: bool = False,
    seats: int = 1,
    period: str = "month",
    customer: str = "cus_test",
    event_id: str | None = None,
) -> dict[str, Any]:
    """customer.subscription.created / updated / deleted (API 2025-03-31 and later: the period
    on the item)."""
    return _event(
        f"customer.subscription.{kind}",
        {
            "id": subscription,
            "object": "subscription",
            "customer": customer,
            "status": "canceled" if kind == "deleted" else status,
            "cancel_at_period_end": cancel_at_period_end,
            "metadata": {"plan": plan, "subject": subject},
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_{subscription}",
                        "object": "subscription_item",
                        "quantity": seats,
                        "current_period_end": int(period_end.timestamp()),
                        "price": {
                            "id": f"price_{plan}",
                            "object": "price",
                            "lookup_key": None,
                            "metadata": {},
                            "recurring": {"interval": period},
                        },
                    }
                ],
            },
        },
        created,
        event_id,
    )


def invoice_event(
    kind: str,
    *,
    subscription: str,
    created: datetime,
    period_end: datetime,
    customer: str = "cus_test",
    event_id: str | None = None,
) -> dict[str, Any]:
    """invoice.paid / invoice.payment_failed (older API: ``subscription`` on the invoice)."""
    return _event(
        f"invoice.{kind}",
        {
            "id": f"in_{uuid.uuid4().hex[:12]}",
            "object": "invoice",
            "customer": customer,
            "subscription": subscription,
            "lines": {"data": [{"period": {"end": int(period_end.timestamp())}}]},
        },
        created,
        event_id,
    )


def signed(event: dict[str, Any], secret: str = SECRET, at: int | None = None) -> tuple[bytes, str]:
    """The body and ``Stripe-Signature`` header Stripe would send for ``event``."""
    payload = json.dumps(event, separators=(",", ":")).encode()
    return payload, sign(payload, secret, int(time.time()) if at is None else at)
