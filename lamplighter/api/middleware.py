"""ASGI middleware, plain classes in the order ``create_app`` lists them."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RATE_LIMIT_HEADERS = "ratelimit_headers"


class RateLimitHeaders:
    """Adds the caller's ``x-ratelimit-*`` headers to every ``/v1`` answer, errors included.

    Authentication leaves them in the request state (``RATE_LIMIT_HEADERS``); a route that
    reserved capacity has set fresher ones on its response, which are kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                found = scope.get("state", {}).get(RATE_LIMIT_HEADERS)
                if found:
                    headers = MutableHeaders(scope=message)
                    for name, value in found.items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
