"""Turns errors into OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lamplighter.exceptions import APIError

log = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _param(location: tuple[int | str, ...]) -> str | None:
    parts = [part for part in location if part != "body"]
    # pydantic names the member of a union it tried ("str", "list[TextPart]"); drop those.
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p in {"str", "int"}))]
    if not parts:
        return None
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    first = cast(RequestValidationError, exc).errors()[0]
    if first.get("type") == "json_invalid":
        message = "We could not parse the JSON body of your request. Send valid JSON."
        return error_response(_InvalidBody(message))
    if first.get("type") == "missing" and first.get("loc") == ("body",):
        return error_response(_InvalidBody("The request needs a JSON body."))
    param = _param(tuple(first.get("loc", ())))
    detail = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
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
    return error_response(error)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is listening; 499 is what proxies log for this.
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(APIError("The server had an error while processing your request."))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
