"""Payment providers: who takes the money, behind one interface.

The service (``service.py``) keeps each subscription's state itself; a provider only carries a
subscriber's decision to where the money is, before the service applies it. Two providers:

``stripe`` (:class:`lamplighter.billing.stripe.StripeClient`)
    Checkout sessions to subscribe, and plan changes and cancellations of the subscription in
    Stripe. What Stripe decides on its own (renewals, failed payments) comes back as webhook
    events.
``manual`` (:class:`ManualProvider`)
    For organisations that invoice internally: an admin grants a plan for a period
    (``lamplighter billing grant``, ``POST /api/admin/billing/grants``); there is nothing to pay
    online, so nothing to tell anyone.
"""

from __future__ import annotations

from typing import Protocol

from lamplighter.billing.stripe import CheckoutSession
from lamplighter.billing.subscriptions import Period
from lamplighter.exceptions import InvalidRequest
from lamplighter.traffic.plans import Plan


class Provider(Protocol):
    name: str

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
    ) -> CheckoutSession: ...

    async def change_plan(
        self,
        ref: str,
        *,
        plan: Plan,
        period: Period,
        seats: int,
        upgrade: bool,
        paid: Plan | None = None,
    ) -> None: ...

    async def change_seats(self, ref: str, *, seats: int) -> None: ...

    async def cancel(self, ref: str, *, at_period_end: bool) -> None: ...

    async def resume(self, ref: str) -> None: ...

    async def portal(self, customer: str, *, return_url: str) -> str: ...

    async def close(self) -> None: ...


class ManualProvider:
    """Plans granted by an admin; the organisation invoices on its own."""

    name = "manual"

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
        raise InvalidRequest(
            "Paying online is not set up here: ask an admin to grant you the plan.",
            code="billing_not_configured",
        )

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
        """Nothing to tell: the grant is the whole record."""

    async def change_seats(self, ref: str, *, seats: int) -> None:
        """Nothing to tell."""

    async def cancel(self, ref: str, *, at_period_end: bool) -> None:
        """Nothing to tell."""

    async def resume(self, ref: str) -> None:
        """Nothing to tell."""

    async def portal(self, customer: str, *, return_url: str) -> str:
        raise InvalidRequest(
            "This plan was granted by an admin: there is nothing to pay online.",
            code="billing_not_configured",
        )

    async def close(self) -> None:
        """Nothing to close."""
