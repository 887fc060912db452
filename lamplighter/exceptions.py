"""Every error Lamplighter raises on purpose, and how each reaches a client.

    LamplighterError
    ├── ConfigError              bad settings or config file; raised at start, never per request
    └── APIError                 carries the HTTP status and the OpenAI error fields
        ├── InvalidRequest       400  invalid_request_error   (param names the bad field)
        │   └── ContextLengthExceeded 400 code=context_length_exceeded
        ├── AuthenticationFailed 401  invalid_request_error   code=invalid_api_key
        ├── NotFound             404  invalid_request_error   (e.g. code=model_not_found)
        ├── Conflict             409  invalid_request_error
        ├── RateLimited          429  requests|tokens         code=rate_limit_exceeded
        ├── QuotaExceeded        429  insufficient_quota      code=insufficient_quota
        ├── ServiceUnavailable   503  server_error            (engine not loaded)
        │   ├── Overloaded       503  server_error            code=overloaded (queue patience)
        │   └── ShuttingDown     503  server_error            code=server_shutting_down (drain)
        └── EngineFailed         500  server_error            (a backend broke mid-request)

Refusals that a client should retry (429, 503) carry ``retry-after`` (whole seconds, as the
``openai`` SDK reads it) and ``retry-after-ms``.

On ``/v1`` one handler turns any ``APIError`` into ``{"error": {"message", "type", "param",
"code"}}`` with its status, the shape the ``openai`` SDK parses into its own exception classes.
"""

from __future__ import annotations

import math
from typing import Any


class LamplighterError(Exception):
    """Base of every error raised on purpose."""


class ConfigError(LamplighterError):
    """The settings or the config file cannot be used."""


class APIError(LamplighterError):
    status_code = 500
    type = "server_error"
    code: str | None = None
    # The kind of violation this refusal counts as for abuse scoring (see abuse/violations.py).
    violation: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    type = "invalid_request_error"


class NotFound(APIError):
    status_code = 404
    type = "invalid_request_error"


class Conflict(APIError):
    status_code = 409
    type = "invalid_request_error"


class _Retryable(APIError):
    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.headers.setdefault("retry-after", str(max(1, math.ceil(retry_after))))
        self.headers.setdefault("retry-after-ms", str(max(1, math.ceil(retry_after * 1000))))

    def retry_in(self, seconds: float) -> None:
        """Tell the client to come back in ``seconds`` instead."""
        self.retry_after = seconds
        self.headers["retry-after"] = str(max(1, math.ceil(seconds)))
        self.headers["retry-after-ms"] = str(max(1, math.ceil(seconds * 1000)))


class Banned(_Retryable):
    status_code = 403
    type = "invalid_request_error"
    code = "temporarily_banned"


class RateLimited(_Retryable):
    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"
    violation = "rate_limited"


class QuotaExceeded(_Retryable):
    status_code = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    violation = "rate_limited"


class ServiceUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class Overloaded(_Retryable):
    status_code = 503
    type = "server_error"
    code = "overloaded"


class ShuttingDown(_Retryable):
    """This replica is stopping (see drain.py): ask again, and another replica answers."""

    status_code = 503
    type = "server_error"
    code = "server_shutting_down"


class EngineFailed(APIError):
    status_code = 500
    type = "server_error"
    code = "engine_error"
