"""Who is at the browser, and CSRF checks: shared by the pages and the page's JSON API."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response

from lamplighter.api.guard import address
from lamplighter.api.state import State
from lamplighter.exceptions import AuthenticationFailed, PermissionDenied
from lamplighter.flywheel.credits import origin_of
from lamplighter.web.auth import Login, Visitor

SESSION_COOKIE = "lamplighter_session"
# Before login there is no session to hold a CSRF token, so the login and sign-up forms use a
# double-submit cookie: the form's hidden field must equal this cookie.
FORM_COOKIE = "lamplighter_csrf"
CSRF_HEADER = "x-csrf-token"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def same_token(given: str | None, expected: str) -> bool:
    return bool(given) and secrets.compare_digest(str(given).encode(), expected.encode())


def set_session(response: Response, request: Request, login: Login, days: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        login.token,
        max_age=days * 86400,
        httponly=True,
        samesite="lax",
        secure=secure(request),
        path="/",
    )
    response.delete_cookie(FORM_COOKIE, path="/")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure(request)
    )


async def current_visitor(request: Request, state: State) -> Visitor | None:
    token = request.cookies.get(SESSION_COOKIE)
    return await state.web.visitor(token) if token else None


async def api_visitor(request: Request, state: State) -> Visitor:
    """The logged-in visitor of a JSON API call (401 otherwise); state-changing calls must
    carry the session's CSRF token in ``X-CSRF-Token`` (403 otherwise)."""
    visitor = await current_visitor(request, state)
    if visitor is None:
        raise AuthenticationFailed("You are not logged in.", code="not_logged_in")
    if request.method in UNSAFE and not same_token(
        request.headers.get(CSRF_HEADER), visitor.csrf_token
    ):
        raise PermissionDenied(
            "Missing or wrong CSRF token. Reload the page and try again.", code="csrf_failed"
        )
    return replace(visitor, origin=origin_of(address(request)))


WebUser = Annotated[Visitor, Depends(api_visitor)]
