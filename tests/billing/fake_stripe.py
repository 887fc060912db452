"""A local HTTP server that stands in for Stripe's API, because the tests have no network. It
answers the calls Lamplighter makes, as Stripe does, and keeps each request (form-decoded) so a
test can check what was sent: Stripe takes ``application/x-www-form-urlencoded`` bodies with
bracketed keys and the secret key as a bearer token."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SECRET_KEY = "sk_test_lamplighter"


class FakeStripe:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # The Idempotency-Key of each Checkout session request, and the answer it was given:
        # Stripe answers a key it has seen with the first answer again.
        self.idempotency_keys: list[str | None] = []
        self._answers: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/checkout/sessions", self.checkout, methods=["POST"]),
                Route("/v1/prices", self.price, methods=["POST"]),
                Route(
                    "/v1/subscriptions/{id}",
                    self.subscription,
                    methods=["GET", "POST", "DELETE"],
                ),
                Route("/v1/billing_portal/sessions", self.portal, methods=["POST"]),
            ]
        )

    async def _form(self, request: Request) -> dict[str, str] | JSONResponse:
        if request.headers.get("authorization") != f"Bearer {SECRET_KEY}":
            return JSONResponse({"error": {"message": "Invalid API Key provided"}}, 401)
        form: dict[str, str] = {}
        body = await request.body()
        if body:
            kind = request.headers.get("content-type", "")
            if not kind.startswith("application/x-www-form-urlencoded"):
                return JSONResponse({"error": {"message": f"bad content type {kind}"}}, 400)
            form = dict(parse_qsl(body.decode(), strict_parsing=False))
        self.requests.append((request.method, request.url.path, form))
        return form

    async def checkout(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        for required in ("mode", "success_url", "cancel_url", "line_items[0][quantity]"):
            if required not in form:
                return JSONResponse({"error": {"message": f"Missing {required}"}}, 400)
        key = request.headers.get("idempotency-key")
        self.idempotency_keys.append(key)
        if key in self._answers:
            return JSONResponse(self._answers[key])
        number = next(self._ids)
        answer = {
            "id": f"cs_test_{number}",
            "object": "checkout.session",
            "url": f"https://checkout.stripe.test/c/pay/cs_test_{number}",
        }
        if key:
            self._answers[key] = answer
        return JSONResponse(answer)

    async def portal(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        if "customer" not in form:
            return JSONResponse({"error": {"message": "Missing required param: customer."}}, 400)
        number = next(self._ids)
        return JSONResponse(
            {
                "id": f"bps_{number}",
                "object": "billing_portal.session",
                "url": f"https://billing.stripe.test/p/session/bps_{number}",
                "return_url": form.get("return_url"),
            }
        )

    async def price(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        return JSONResponse({"id": f"price_{next(self._ids)}", "object": "price"})

    async def subscription(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        ref = request.path_params["id"]
        body: dict[str, Any] = {
            "id": ref,
            "object": "subscription",
            "items": {"data": [{"id": f"si_{ref}", "quantity": 1}]},
        }
        return JSONResponse(body)

    def sent(self, path: str) -> list[dict[str, str]]:
        return [form for _, at, form in self.requests if at == path]
