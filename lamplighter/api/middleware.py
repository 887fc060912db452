"""ASGI middleware, plain classes in the order ``create_app`` lists them."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uuid6 import uuid7

from lamplighter.logs import request_id

access = logging.getLogger("lamplighter.access")
# A client's own request id is kept when it is short and plain; anything else is replaced.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# When the request being served reached the server (wall clock, ``time.time()``): the abuse
# scores tell a request that was on its way when a refusal went out from one sent after it.
arrived: ContextVar[float | None] = ContextVar("arrived", default=None)
# The request state's key for the caller's plan, once known (``guard.subjects`` notes it).
ACCESS_PLAN = "access_plan"
# Paths that end in a secret: a password link's token sets the account's password for 7 days.
_SECRET_PATH = re.compile(r"^(/invite/)[^/]+")


def logged_path(path: str) -> str:
    """``path`` as logs and traces may keep it: a secret in it is replaced by "…", keeping
    the route's shape (``/invite/…``), so whoever reads the logs holds no password link."""
    return _SECRET_PATH.sub(r"\1…", path)


class RequestIds:
    """Gives every request an id (the client's ``x-request-id`` if usable), returns it in the
    response's ``x-request-id``, puts it on every log line written while serving the request,
    and writes one access line per request: method, path (its secrets redacted, see
    ``logged_path``), status, duration, and where known the error's code (from an error
    answer's JSON body) and the caller's plan. Never headers, query strings or bodies beyond
    that code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        rid = given if _CLIENT_ID.match(given) else uuid7().hex
        token = request_id.set(rid)
        arrival = arrived.set(time.time())
        started = time.perf_counter()
        status: int | None = None
        code: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = rid
            elif status is not None and status >= 400 and code is None:
                code = _error_code(message.get("body", b""))
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            if status is None:
                # Nothing was sent: the app raised (500), or it gave up on a client that had
                # left (a response abandoned on disconnect: 499, as proxies log it).
                status = 500 if failed else 499
            line = {
                "method": scope["method"],
                "path": logged_path(scope["path"]),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if code:
                line["code"] = code
            plan = scope.get("state", {}).get(ACCESS_PLAN)
            if plan is not None:
                line["plan"] = plan
            access.info("request", extra=line)
            request_id.reset(token)
            arrived.reset(arrival)


def _error_code(body: bytes) -> str:
    """The ``code`` of an error answer in OpenAI's shape (``{"error": {"code": ...}}``), or
    ``""`` when the body is not one: an identifier, never the message."""
    if not body.startswith(b"{") or len(body) > 65536:
        return ""
    try:
        error = json.loads(body).get("error")
    except ValueError:
        return ""
    found = error.get("code") if isinstance(error, dict) else None
    return found if isinstance(found, str) and len(found) <= 64 else ""


RATE_LIMIT_HEADERS = "ratelimit_headers"


class RateLimitHeaders:
    """Adds the caller's ``x-ratelimit-*`` headers to every ``/v1`` answer, errors included.

    Authentication leaves a way to read them in the request state (``RATE_LIMIT_HEADERS``, an
    async function), used only when the answer starts without them: a route that reserved
    capacity has set fresher ones on its response, which are kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                read = scope.get("state", {}).get(RATE_LIMIT_HEADERS)
                headers = MutableHeaders(scope=message)
                if read is not None and "x-ratelimit-remaining-requests" not in headers:
                    for name, value in (await read()).items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Browser hardening on every response: no script but our own files (so nothing a model
    writes can run, even if it slipped past the sanitizer), no framing, no MIME sniffing, no
    referrer leaving the site, and HSTS when served over TLS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", CONTENT_SECURITY_POLICY)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("x-frame-options", "DENY")
                headers.setdefault("referrer-policy", "same-origin")
                if secure:
                    headers.setdefault("strict-transport-security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


# Browsers send a few KB; cookies are capped at 4 KB each. 32 KiB leaves room and stops abuse.
MAX_HEADER_BYTES = 32 * 1024
# A body must arrive within BODY_GRACE_S, plus one second for every BODY_MIN_RATE bytes that
# have arrived: 30 s for any chat request, and about 9 minutes for an 8 MiB one, which even a
# 128 kbit/s link sends in 8.5. A client that trickles a byte at a time is answered 408 after
# 30 s, and no longer holds a connection (and a file descriptor) for as long as it likes.
BODY_GRACE_S = 30.0
BODY_MIN_RATE = 16 * 1024
# Paths whose callers read errors in the API's JSON shape; the rest are pages.
_APIS = ("/v1/", "/api/")


class RequestLimits:
    """Refuses, in the OpenAI error shape and before anything is parsed, headers over
    MAX_HEADER_BYTES (431) and bodies over ``max_bytes`` (413): at once when ``Content-Length``
    says so, and otherwise as soon as the bytes received pass the limit. The body is read here
    first, within its deadline (BODY_GRACE_S, longer at BODY_MIN_RATE), then handed on whole;
    one too slow gets 408 (in the error shape on the APIs, in plain text on pages)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            await self._refuse(
                send,
                431,
                f"The request's headers are larger than the {MAX_HEADER_BYTES} bytes this "
                "server accepts.",
                "headers_too_large",
            )
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        try:
            body = await self._body(receive)
        except TimeoutError:
            await self._refuse(
                send,
                408,
                f"The request body did not arrive in time: {BODY_GRACE_S:g} s, and one more "
                f"for every {BODY_MIN_RATE // 1024} KiB sent.",
                "request_timeout",
                plain=not scope["path"].startswith(_APIS),
            )
            return
        if body is None:
            await self._refuse(send)
            return
        await self.app(scope, _once(body, receive), send)

    async def _body(self, receive: Receive) -> Message | None:
        """The whole body as one message, or what came instead (the client left: passed on);
        None once it passes ``max_bytes``; TimeoutError once its deadline has passed."""
        parts: list[bytes] = []
        size = 0
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(BODY_GRACE_S) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    return None
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return {"type": "http.request", "body": b"".join(parts)}
                deadline.reschedule(started + BODY_GRACE_S + size / BODY_MIN_RATE)

    async def _refuse(
        self,
        send: Send,
        status: int = 413,
        message: str = "",
        code: str = "request_too_large",
        *,
        plain: bool = False,
    ) -> None:
        message = message or (
            f"The request body is larger than the {self.max_bytes} bytes this server accepts."
        )
        body, kind = message.encode(), b"text/plain; charset=utf-8"
        if not plain:
            error = {"message": message, "type": "invalid_request_error", "param": None}
            body = json.dumps({"error": {**error, "code": code}}).encode()
            kind = b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", kind),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _once(first: Message, receive: Receive) -> Receive:
    """A receive that returns ``first``, then whatever ``receive`` returns."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
