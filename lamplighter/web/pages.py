"""The server-rendered pages: log in, sign up, accept an invite, log out, and the chat page
(whose content the page's own script fetches from the JSON API)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from lamplighter.abuse.watch import disposable
from lamplighter.api import guard
from lamplighter.api.state import Services, State
from lamplighter.exceptions import (
    APIError,
    AuthenticationFailed,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
)
from lamplighter.store.conversations import Conversations
from lamplighter.web.api import ChatBody
from lamplighter.web.auth import Login, new_token
from lamplighter.web.session import (
    FORM_COOKIE,
    SESSION_COOKIE,
    clear_session,
    current_visitor,
    same_token,
    secure,
    set_session,
)
from lamplighter.web.throttle import describe

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
router = APIRouter(include_in_schema=False)


def _form_page(
    request: Request,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """A page with a pre-login form, protected by a double-submit CSRF cookie."""
    token = request.cookies.get(FORM_COOKIE) or new_token()
    response = templates.TemplateResponse(
        request,
        template,
        {"csrf_token": token, "error": None, **context},
        status_code=status,
        headers=headers,
    )
    response.set_cookie(
        FORM_COOKIE, token, httponly=True, samesite="strict", secure=secure(request), path="/"
    )
    return response


async def _form(request: Request) -> dict[str, str]:
    """The posted form's fields, once its CSRF token matches the form cookie."""
    form = await request.form()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    cookie = request.cookies.get(FORM_COOKIE)
    if not cookie or not same_token(fields.get("csrf_token"), cookie):
        raise PermissionDenied("The form expired. Reload the page and try again.")
    return fields


# Where a login may send the person back to: a path of this site, nothing else. One leading
# slash (a second makes "//evil.example", another site), and only the characters of a URL's path
# and query: no backslash ("/\\evil.example" is "//evil.example" to browsers), no space, tab or
# newline (browsers drop those, so "/\t/evil.example" would become "//evil.example" too), and
# so no scheme ("https://...", "javascript:...") either, since that cannot start with "/".
_SAME_SITE_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")


def next_path(value: str | None) -> str:
    """The page to go back to after logging in: ``value`` when it is a path of this site (see
    ``_SAME_SITE_PATH``), else the chat's home. Never another site: no open redirect."""
    if value and len(value) <= 2000 and _SAME_SITE_PATH.fullmatch(value):
        return value
    return "/"


def login_url(next_page: str | None = None, *, ended: bool = False) -> str:
    """The login page, saying the session ended, and where to come back to afterwards."""
    query = {}
    if ended:
        query["session"] = "ended"
    if next_page and next_path(next_page) != "/":
        query["next"] = next_page
    return "/login" + (f"?{urlencode(query)}" if query else "")


def _logged_in(request: Request, state: Services, login: Login, to: str = "/") -> Response:
    response = RedirectResponse(next_path(to), status_code=303)
    set_session(response, request, login, state.settings.session_days)
    return response


def _max_message_chars() -> int:
    """The longest message /api/chat takes (its own rule on ``content``), which the page shows
    before sending rather than send a message only to have it refused."""
    rules = ChatBody.model_fields["content"].metadata
    return next(int(rule.max_length) for rule in rules if hasattr(rule, "max_length"))


def not_found(request: Request, message: str) -> Response:
    return templates.TemplateResponse(
        request, "notfound.html", {"message": message}, status_code=404
    )


@router.get("/login")
async def login_page(request: Request, state: State) -> Response:
    """The login form. ``next``: the page to come back to (a chat the session ended on, or a
    link to one opened logged out); ``session=ended``: say why the person is here."""
    back = next_path(request.query_params.get("next"))
    if await current_visitor(request, state) is not None:
        return RedirectResponse(back, status_code=303)
    return _form_page(
        request,
        "login.html",
        email="",
        signups_open=state.settings.signups == "open",
        next_page=back,
        ended=request.query_params.get("session") == "ended",
    )


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    email = ""
    back = "/"
    try:
        fields = await _form(request)
        email = fields.get("email", "")
        back = next_path(fields.get("next"))
        guard.refuse_banned(state, *guard.subjects(request))
        login = await state.web.login(email, fields.get("password", ""), guard.address(request))
    except APIError as error:
        if isinstance(error, AuthenticationFailed):
            state.chat.metrics.violations.labels("login_failed").inc()
            guard.announce(state, state.violations.record("login_failed", *guard.subjects(request)))
        return _form_page(
            request,
            "login.html",
            status=error.status_code,
            headers=error.headers,
            error=error.message,
            email=email,
            signups_open=state.settings.signups == "open",
            next_page=back,
        )
    return _logged_in(request, state, login, back)


@router.get("/signup")
async def signup_page(request: Request, state: State) -> Response:
    if state.settings.signups != "open":
        return not_found(request, "Sign-up is by invitation only here. Ask an admin.")
    return _form_page(request, "signup.html", email="")


@router.post("/signup")
async def signup(request: Request, state: State) -> Response:
    if state.settings.signups != "open":
        return not_found(request, "Sign-up is by invitation only here. Ask an admin.")
    email = ""
    try:
        fields = await _form(request)
        email = fields.get("email", "")
        address = guard.address(request)
        guard.refuse_banned(state, *guard.subjects(request))
        screen_signup(state, email, address)
        login = await state.web.signup(
            email, fields.get("password", ""), state.settings.signup_plan
        )
    except APIError as error:
        return _form_page(
            request,
            "signup.html",
            status=error.status_code,
            headers=error.headers,
            error=error.message,
            email=email,
        )
    findings = state.watch.signup(email, address)
    for finding in findings:
        state.chat.metrics.findings.labels(finding.kind).inc()
    await state.reviews.file(findings)
    return _logged_in(request, state, login)


def screen_signup(state: Services, email: str, address: str) -> None:
    """Refuse throwaway addresses, and networks that made too many accounts lately."""
    if disposable(email):
        raise InvalidRequest(
            "Sign-ups from disposable email addresses are not accepted. Use a lasting address.",
            param="email",
        )
    wait = state.watch.signup_blocked(address)
    if wait > 0:
        raise RateLimited(
            f"Too many accounts were made from your network lately. Try again in {describe(wait)}.",
            retry_after=wait,
        )


def _unreferred(response: Response) -> Response:
    """A password link's page says where it is to nobody: the requests it makes (its styles,
    its script, the form's post and where that leads) would otherwise carry the link in their
    Referer, which proxies' and nginx's logs keep."""
    response.headers["referrer-policy"] = "no-referrer"
    return response


@router.get("/invite/{token}")
async def invite_page(token: str, request: Request, state: State) -> Response:
    """An invitation (choose a password) or a reset (choose a new one): both links from
    `lamplighter users invite` / `users reset-password`."""
    try:
        invitation = await state.web.invitation(token)
    except APIError as error:
        return _unreferred(not_found(request, error.message))
    return _unreferred(_form_page(request, "invite.html", invitation=invitation, token=token))


@router.post("/invite/{token}")
async def accept_invite(token: str, request: Request, state: State) -> Response:
    try:
        invitation = await state.web.invitation(token)
    except APIError as error:
        return _unreferred(not_found(request, error.message))
    try:
        fields = await _form(request)
        login = await state.web.accept(token, fields.get("password", ""))
    except APIError as error:
        page = _form_page(
            request,
            "invite.html",
            status=error.status_code,
            error=error.message,
            invitation=invitation,
            token=token,
        )
        return _unreferred(page)
    return _unreferred(_logged_in(request, state, login))


@router.post("/logout")
async def logout(request: Request, state: State, everywhere: bool = False) -> Response:
    """End this session, or with ``?everywhere=1`` every session of the account (a lost
    laptop, a shared computer)."""
    visitor = await current_visitor(request, state)
    if visitor is not None:
        form = await request.form()
        if not same_token(str(form.get("csrf_token", "")), visitor.csrf_token):
            raise PermissionDenied("The form expired. Reload the page and try again.")
        if everywhere:
            await state.web.logout_everywhere(visitor.principal.user_id)
        else:
            await state.web.logout(request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    clear_session(response, request)
    return response


async def _chat_page(request: Request, state: Services, conversation: str | None) -> Response:
    visitor = await current_visitor(request, state)
    if visitor is None:
        # Back to this chat once logged in; a session cookie the server no longer knows means
        # the session ended (logged out elsewhere, or the account's sessions were ended).
        ended = request.cookies.get(SESSION_COOKIE) is not None
        return RedirectResponse(login_url(request.url.path, ended=ended), status_code=303)
    if conversation is not None:
        try:
            conversation_id = uuid.UUID(conversation)
        except ValueError:
            return not_found(request, "There is no such conversation.")
        async with state.db.transaction() as session:
            owned = await Conversations(session).owned(visitor.principal.user_id, conversation_id)
        if owned is None:
            return not_found(request, "There is no such conversation.")
    who = visitor.principal
    return templates.TemplateResponse(
        request,
        "chat.html",
        {
            "csrf_token": visitor.csrf_token,
            "max_message_chars": _max_message_chars(),
            "user": {
                "id": str(who.user_id),
                "email": who.email,
                "plan": who.plan,
                "is_admin": who.is_admin,
            },
        },
        headers={"cache-control": "no-store"},
    )


@router.get("/")
async def home(request: Request, state: State) -> Response:
    return await _chat_page(request, state, None)


@router.get("/c/{conversation}")
async def conversation_page(conversation: str, request: Request, state: State) -> Response:
    return await _chat_page(request, state, conversation)


CONSOLE_SECTIONS = ("dashboard", "plans", "users", "usage", "review", "flywheel")


async def _console(request: Request, state: Services, section: str) -> Response:
    """The operator console. Anyone but a logged-in admin gets the same 404 as a page that
    does not exist."""
    visitor = await current_visitor(request, state)
    if visitor is None or not visitor.principal.is_admin or section not in CONSOLE_SECTIONS:
        return not_found(request, "There is no such page.")
    who = visitor.principal
    return templates.TemplateResponse(
        request,
        "admin.html",
        {
            "csrf_token": visitor.csrf_token,
            "section": section,
            "user": {
                "id": str(who.user_id),
                "email": who.email,
                "plan": who.plan,
                "is_admin": who.is_admin,
            },
        },
        headers={"cache-control": "no-store"},
    )


@router.get("/admin")
async def console_home(request: Request, state: State) -> Response:
    return await _console(request, state, "dashboard")


@router.get("/admin/{section}")
async def console_section(section: str, request: Request, state: State) -> Response:
    return await _console(request, state, section)
