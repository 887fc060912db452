"""Stripe, spoken directly over its REST API with httpx (no SDK): Checkout sessions, plan
changes and cancellations going out, signed webhook events coming in.

Going out, requests are form-encoded with Stripe's bracket notation
(``line_items[0][price_data][currency]=usd``) and authenticated with the secret key. Coming in,
``Stripe-Signature`` is checked exactly as Stripe's libraries do (:func:`verify`), and each event
is turned into one event of the state machine (:func:`translate`); the service applies it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from lamplighter.billing.subscriptions import (
    Event,
    Paid,
    PaymentFailed,
    Period,
    Snapshot,
    Started,
    Terminated,
    add_period,
)
from lamplighter.exceptions import InvalidRequest, ServiceUnavailable
from lamplighter.traffic.plans import Plan

API_BASE = "https://api.stripe.com"
# Stripe's libraries refuse a signature older than this (seconds).
TOLERANCE_S = 300
# The events the webhook endpoint in Stripe's dashboard should send.
EVENTS = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


class SignatureInvalid(InvalidRequest):
    code = "invalid_signature"


# --- Signatures --------------------------------------------------------------------------------


def signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``v1`` signature of ``payload`` sent at ``timestamp``: HMAC-SHA256, keyed with the
    endpoint's signing secret, of ``"{timestamp}.{payload}"``, in hex."""
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, as Stripe makes it (for tests and for
    sending an event by hand)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(payload, secret, timestamp)}"


def verify(
    payload: bytes,
    header: str | None,
    secret: str,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_S,
) -> None:
    """Raise :class:`SignatureInvalid` unless ``header`` signs ``payload`` with ``secret``.

    As Stripe's own libraries: the header is ``t=TIMESTAMP,v1=SIG[,v1=SIG...][,v0=...]``; any
    ``v1`` may match (Stripe sends one per secret while a secret is being rolled), compared in
    constant time; a timestamp more than ``tolerance`` seconds old is refused, so a captured
    request cannot be replayed later.
    """
    if not header:
        raise SignatureInvalid("No Stripe-Signature header.", param="Stripe-Signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                timestamp = None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise SignatureInvalid("The Stripe-Signature header has no timestamp.")
    if not candidates:
        raise SignatureInvalid("The Stripe-Signature header has no v1 signature.")
    expected = signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, given) for given in candidates):
        raise SignatureInvalid(
            "No signature in the Stripe-Signature header matches the payload; check "
            "LAMPLIGHTER_STRIPE_WEBHOOK_SECRET."
        )
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise SignatureInvalid(
            f"The Stripe-Signature timestamp is more than {tolerance} s old (a replay?)."
        )


# --- Events coming in --------------------------------------------------------------------------


@dataclass(frozen=True)
class Translation:
    """A Stripe event, as the service needs it: which subscription, whose, and what happened."""

    ref: str | None
    event: Event | None
    customer: str | None = None
    # "user:<uuid>" or "team:<uuid>", from the metadata set at checkout; None when absent.
    subject: str | None = None
    # For a first sighting: the terminal Snapshot that creates the record (deleted).
    creates: Event | None = None


def _moment(seconds: Any) -> datetime | None:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return datetime.fromtimestamp(seconds, UTC)
    return None


def _id(value: Any) -> str | None:
    """An expandable field: the id string, or the expanded object's id."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _items(sub: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = sub.get("items")
    data = items.get("data") if isinstance(items, Mapping) else None
    return [item for item in data or [] if isinstance(item, Mapping)]


def _plan_of(sub: Mapping[str, Any], plans: Mapping[str, Plan]) -> str | None:
    """The plan a subscription object is for: its price's ``metadata.plan`` or ``lookup_key``
    naming a plan, else the subscription's ``metadata.plan`` (set at checkout and on changes)."""
    for item in _items(sub)[:1]:
        price = item.get("price")
        if isinstance(price, Mapping):
            for name in (_metadata(price).get("plan"), price.get("lookup_key")):
                if isinstance(name, str) and name in plans:
                    return name
    name = _metadata(sub).get("plan")
    return name if isinstance(name, str) and name else None


def _period_of(sub: Mapping[str, Any]) -> Period:
    for item in _items(sub)[:1]:
        price = item.get("price")
        recurring = price.get("recurring") if isinstance(price, Mapping) else None
        if isinstance(recurring, Mapping) and recurring.get("interval") == "year":
            return "year"
    return "year" if _metadata(sub).get("period") == "year" else "month"


def _period_end(sub: Mapping[str, Any]) -> datetime | None:
    # Older API versions have it on the subscription, newer ones (2025-03-31 on) on each item.
    found = _moment(sub.get("current_period_end"))
    for item in _items(sub):
        end = _moment(item.get("current_period_end"))
        if end is not None and (found is None or end > found):
            found = end
    return found


def _seats(sub: Mapping[str, Any]) -> int:
    for item in _items(sub)[:1]:
        quantity = item.get("quantity")
        if isinstance(quantity, int) and quantity >= 1:
            return quantity
    quantity = sub.get("quantity")
    return quantity if isinstance(quantity, int) and quantity >= 1 else 1


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    found = _id(invoice.get("subscription"))
    if found is None:  # API 2025-03-31 on: under parent.subscription_details
        parent = invoice.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
        if isinstance(details, Mapping):
            found = _id(details.get("subscription"))
    return found


def _invoice_period_end(invoice: Mapping[str, Any]) -> datetime | None:
    lines = invoice.get("lines")
    data = lines.get("data") if isinstance(lines, Mapping) else None
    found: datetime | None = None
    for line in data or []:
        period = line.get("period") if isinstance(line, Mapping) else None
        end = _moment(period.get("end")) if isinstance(period, Mapping) else None
        if end is not None and (found is None or end > found):
            found = end
    return found


def translate(event: Mapping[str, Any], plans: Mapping[str, Plan]) -> Translation:
    """What ``event`` means for the state machine; ``Translation(ref=None, event=None)`` for an
    event of a kind we do not act on, or one that does not say enough."""
    kind = event.get("type")
    at = _moment(event.get("created"))
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if at is None or not isinstance(obj, Mapping):
        return Translation(None, None)
    meta = _metadata(obj)
    subject = meta.get("subject") if isinstance(meta.get("subject"), str) else None
    if kind == "checkout.session.completed":
        if obj.get("mode") != "subscription" or obj.get("payment_status") not in (
            "paid",
            "no_payment_required",
        ):
            return Translation(None, None)
        plan = meta.get("plan")
        if not isinstance(plan, str) or plan not in plans:
            return Translation(None, None)
        period: Period = "year" if meta.get("period") == "year" else "month"
        seats = meta.get("seats")
        started = Started(
            at=at,
            plan=plan,
            period=period,
            seats=int(seats) if isinstance(seats, str) and seats.isdigit() else 1,
            period_end=add_period(at, period),
            status="trialing" if obj.get("payment_status") == "no_payment_required" else "active",
        )
        subject = subject or (
            obj["client_reference_id"] if isinstance(obj.get("client_reference_id"), str) else None
        )
        return Translation(_id(obj.get("subscription")), started, _id(obj.get("customer")), subject)
    if isinstance(kind, str) and kind.startswith("customer.subscription."):
        period_end = _period_end(obj)
        snapshot = None
        if period_end is not None:
            snapshot = Snapshot(
                at=at,
                status="canceled"
                if kind == "customer.subscription.deleted"
                else str(obj.get("status", "")),
                plan=_plan_of(obj, plans) or "",
                seats=_seats(obj),
                period_end=period_end,
                cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
                period=_period_of(obj),
            )
        ref, customer = _id(obj), _id(obj.get("customer"))
        if kind == "customer.subscription.deleted":
            # A deletion is final whenever it is heard: never skipped as older than a snapshot;
            # heard first, it creates the subscription already ended.
            return Translation(ref, Terminated(at), customer, subject, creates=snapshot)
        return Translation(ref, snapshot, customer, subject)
    if kind == "invoice.paid":
        end = _invoice_period_end(obj)
        ref = _invoice_subscription(obj)
        if ref is None or end is None:
            return Translation(None, None)
        return Translation(ref, Paid(at, end), _id(obj.get("customer")))
    if kind == "invoice.payment_failed":
        ref = _invoice_subscription(obj)
        if ref is None:
            return Translation(None, None)
        return Translation(ref, PaymentFailed(at), _id(obj.get("customer")))
    return Translation(None, None)


def parse(payload: bytes) -> Mapping[str, Any]:
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise InvalidRequest("The webhook body is not JSON.") from exc
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise InvalidRequest("The webhook body is not a Stripe event.")
    return event


# --- Requests going out ------------------------------------------------------------------------


def encode(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Stripe's form encoding: nested mappings and lists as ``a[b][0][c]=v``."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from encode(value, name)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from encode(item, f"{name}[{index}]")
                else:
                    yield f"{name}[{index}]", _text(item)
        elif value is not None:
            yield name, _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class StripeClient:
    """The few calls Lamplighter makes to Stripe's API: the Stripe payment provider."""

    name = "stripe"

    def __init__(self, secret_key: str, base_url: str = API_BASE, *, timeout: float = 20.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {secret_key}"},
            timeout=timeout,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            if method == "GET":
                response = await self._http.get(path, headers=headers)
            else:
                response = await self._http.request(
                    method, path, data=dict(encode(params or {})), headers=headers
                )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"Stripe could not be reached: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            if response.status_code >= 500 or response.status_code == 429:
                raise ServiceUnavailable(f"Stripe is not answering: {message or response.text}")
            raise InvalidRequest(f"Stripe refused the request: {message or response.text}")
        if not isinstance(body, dict):
            raise ServiceUnavailable("Stripe answered with something that is not an object.")
        return body

    async def checkout(
        self,
        *,
        plan: Plan,
        period: Period,
        seats: int,
        subject: str,
        success_url: str,
        cancel_url: str,
        customer: str | None = None,
        email: str | None = None,
        idempotency_key: str | None = None,
    ) -> CheckoutSession:
        """A Checkout session for ``seats`` seats of ``plan`` billed every ``period``."""
        metadata = {"plan": plan.name, "period": period, "subject": subject, "seats": str(seats)}
        params: dict[str, Any] = {
            "mode": "subscription",
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": subject,
            "line_items": [
                {
                    "quantity": seats,
                    "price_data": {
                        "currency": plan.currency,
                        "unit_amount": plan.price(period),
                        "recurring": {"interval": period},
                        "product_data": {"name": f"Lamplighter {plan.name}"},
                    },
                }
            ],
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
        }
        if customer:
            params["customer"] = customer
        elif email:
            params["customer_email"] = email
        body = await self._call(
            "POST", "/v1/checkout/sessions", params, idempotency_key=idempotency_key
        )
        if not isinstance(body.get("id"), str) or not isinstance(body.get("url"), str):
            raise ServiceUnavailable("Stripe's Checkout session has no id or url.")
        return CheckoutSession(body["id"], body["url"])

    async def change_plan(
        self,
        ref: str,
        *,
        plan: Plan,
        period: Period,
        seats: int,
        upgrade: bool,
        paid: Plan | None = None,
    ) -> None:
        """Switch subscription ``ref`` to ``plan``. An upgrade is charged now, prorated; a
        downgrade is charged from the next renewal (the current period stays paid for). With
        ``paid`` (an upgrade while a downgrade waits, so Stripe is on the cheaper price), the
        price of the plan the period was paid at is put back first, uncharged, so that Stripe
        prorates the upgrade from it and not from the cheaper one."""
        item = await self._item(ref)
        if paid is not None:
            await self._switch(ref, item, plan=paid, period=period, seats=seats)
        await self._switch(ref, item, plan=plan, period=period, seats=seats, charge_now=upgrade)

    async def _item(self, ref: str) -> str:
        """The id of subscription ``ref``'s item (Lamplighter's subscriptions have one)."""
        items = _items(await self._call("GET", f"/v1/subscriptions/{ref}"))
        if not items or not isinstance(items[0].get("id"), str):
            raise ServiceUnavailable(f"Stripe's subscription {ref} has no item to change.")
        return str(items[0]["id"])

    async def change_seats(self, ref: str, *, seats: int) -> None:
        """Set subscription ``ref``'s quantity to ``seats``, prorated now: seats added are
        invoiced for the rest of the period, seats given back are credited."""
        item = await self._item(ref)
        await self._call(
            "POST",
            f"/v1/subscriptions/{ref}",
            {
                "items": [{"id": item, "quantity": seats}],
                "proration_behavior": "always_invoice",
                "metadata": {"seats": str(seats)},
            },
        )

    async def _switch(
        self,
        ref: str,
        item: str,
        *,
        plan: Plan,
        period: Period,
        seats: int,
        charge_now: bool = False,
    ) -> None:
        """Put subscription item ``item`` on a new price for ``plan``: the prorated difference
        invoiced now (``charge_now``), or nothing until the renewal."""
        price = await self._call(
            "POST",
            "/v1/prices",
            {
                "currency": plan.currency,
                "unit_amount": plan.price(period),
                "recurring": {"interval": period},
                "product_data": {"name": f"Lamplighter {plan.name}"},
                "metadata": {"plan": plan.name},
            },
        )
        await self._call(
            "POST",
            f"/v1/subscriptions/{ref}",
            {
                "items": [{"id": item, "price": price["id"], "quantity": seats}],
                "proration_behavior": "always_invoice" if charge_now else "none",
                "metadata": {"plan": plan.name, "period": period},
            },
        )

    async def cancel(self, ref: str, *, at_period_end: bool) -> None:
        if at_period_end:
            await self._call("POST", f"/v1/subscriptions/{ref}", {"cancel_at_period_end": True})
        else:
            await self._call("DELETE", f"/v1/subscriptions/{ref}")

    async def resume(self, ref: str) -> None:
        await self._call("POST", f"/v1/subscriptions/{ref}", {"cancel_at_period_end": False})

    async def portal(self, customer: str, *, return_url: str) -> str:
        """The address of a Stripe customer portal session for ``customer``: where a person pays
        an unpaid invoice, changes their card and sees their invoices, then comes back."""
        body = await self._call(
            "POST", "/v1/billing_portal/sessions", {"customer": customer, "return_url": return_url}
        )
        if not isinstance(body.get("url"), str):
            raise ServiceUnavailable("Stripe's customer portal session has no url.")
        return str(body["url"])
