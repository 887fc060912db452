"""Turns errors into OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lamplighter.api.middleware import logged_path
from lamplighter.api.openai import chat_principal
from lamplighter.api.schemas import INPUT_ITEMS, unsupported
from lamplighter.api.state import services
from lamplighter.exceptions import APIError

log = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


# OpenAI parameters this server does not offer, and why: refused as unsupported, which says more
# than "unrecognized" about a field a developer copied from OpenAI's reference.
UNSUPPORTED = {
    "functions": "give functions as 'tools' (the older 'functions' form is not offered)",
    "function_call": "give functions as 'tools' (the older 'functions' form is not offered)",
    "logit_bias": "the engines here take no logit bias",
    "audio": "only text is offered",
    "modalities": "only text is offered",
    "prediction": "predicted outputs are not offered",
    "reasoning_effort": "the models here do not reason in separate steps",
    "service_tier": "there is one service tier; plans set priorities",
    "prompt": "stored prompt templates are not offered",
    "max_tool_calls": "a limit on the number of tool calls is not offered",
    "web_search_options": "web search is not offered",
}


def _union_branch(part: int | str) -> bool:
    """Whether a location part names the member of a union pydantic tried ("str",
    "list[TextPart]") rather than a field."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int"})


def _most_telling(errors: Sequence[Any]) -> Any:
    """The error to report. For a union (a message's content: a string or a list of parts)
    pydantic reports one error per member; the one from the member the input's type matches
    says what is wrong (a list of parts with an image: that part, not "should be a string")."""
    first = errors[0]
    location = tuple(first.get("loc", ()))
    branch = next((i for i, part in enumerate(location) if _union_branch(part)), None)
    if branch is None or not isinstance(first.get("input"), list) or "[" in str(location[branch]):
        return first
    prefix = location[:branch]
    for error in errors[1:]:
        other = tuple(error.get("loc", ()))
        if other[:branch] == prefix and len(other) > branch and "[" in str(other[branch]):
            return error
    return first


def _param(location: tuple[int | str, ...]) -> str | None:
    parts = [part for part in location if part not in ("body", "query")]
    parts = [part for part in parts if not _union_branch(part)]
    # A Responses input item's kind, as its tagged union names the member tried
    # ("input", 0, "message", "role"): not a field.
    if parts[:1] == ["input"] and len(parts) > 2 and parts[2] in INPUT_ITEMS:
        del parts[2]
    if not parts:
        return None
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        if request.url.path.startswith("/v1/"):
            # FastAPI reads the body before any dependency runs; OpenAI checks the key first,
            # and a client with a bad key (or a banned one, a key without the chat scope)
            # should hear about that, as it would with a good body.
            try:
                await chat_principal(request, await services(request))
            except APIError as error:
                return error_response(error)
        message = "We could not parse the JSON body of your request. Send valid JSON."
        return error_response(_InvalidBody(message))
    if first.get("type") == "missing" and first.get("loc") == ("body",):
        return error_response(_InvalidBody("The request needs a JSON body."))
    first = _most_telling(errors)
    location = tuple(first.get("loc", ()))
    param = _param(location)
    detail = first.get("msg", "invalid value")
    field = location[-1] if location else None
    if param is None:
        message = f"The request body must be a JSON object: {detail}."
    elif first.get("type") == "extra_forbidden" and field in UNSUPPORTED:
        return error_response(unsupported(param, UNSUPPORTED[field]))
    elif first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif field == "type" and "content" in location and isinstance(first.get("input"), str):
        message = (
            f"Invalid value for '{param}': only text content parts are supported here, "
            f"not '{first['input']}'."
        )
    else:
        message = f"Invalid value for '{param}': {detail}."
    return error_response(_InvalidBody(message, param=param))


class _InvalidBody(APIError):
    status_code = 400
    type = "invalid_request_error"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(cast(APIError, exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(HTTPException, exc)
    error = APIError(str(exc.detail), headers=dict(exc.headers or {}))
    error.status_code = exc.status_code
    error.type = "invalid_request_error"
    if exc.status_code == 404:
        error.message = f"Unknown request URL: {request.method} {request.url.path}."
        error.code = "unknown_url"
    elif exc.status_code == 405:
        allowed = next((v for k, v in error.headers.items() if k.lower() == "allow"), "")
        error.message = f"{request.method} is not allowed on {request.url.path}" + (
            f"; use {allowed}." if allowed else "."
        )
        error.code = "method_not_allowed"
    return error_response(error)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is listening; 499 is what proxies log for this.
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": logged_path(request.url.path)})
    return error_response(APIError("The server had an error while processing your request."))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
