"""The access line's status says what happened to a request, including the ones that got no
response: a client that left before its answer was ready (499) and a failure (500)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from lamplighter.api.middleware import RequestIds
from lamplighter.api.responses import DeferredJSONResponse

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


async def _never() -> tuple[int, Any, dict[str, str]]:
    await asyncio.Event().wait()  # an answer that takes longer than the client waits
    raise AssertionError("unreachable")


async def _serve(app: Any, caplog: pytest.LogCaptureFixture) -> tuple[list[Message], int]:
    sent: list[Message] = []
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        try:
            return next(messages)
        except StopIteration:
            return {"type": "http.disconnect"}  # the client hangs up

    async def send(message: Message) -> None:
        sent.append(message)

    caplog.clear()
    # A failing app's error goes on up to the server (which answers 500); its line is logged.
    with caplog.at_level(logging.INFO, logger="lamplighter.access"), suppress(RuntimeError):
        await RequestIds(app)(dict(SCOPE), receive, send)
    [line] = [r for r in caplog.records if r.name == "lamplighter.access"]
    return sent, line.status  # type: ignore[attr-defined]


async def test_a_whole_answer_its_client_left_before_is_logged_499(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await DeferredJSONResponse(_never, finally_=close)(scope, receive, send)

    sent, status = await _serve(app, caplog)
    assert (sent, status, closed) == ([], 499, [True])  # nothing sent, the exchange closed


async def test_a_failure_before_any_answer_is_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    _, status = await _serve(app, caplog)
    assert status == 500


async def test_an_answer_is_logged_with_its_own_status(caplog: pytest.LogCaptureFixture) -> None:
    async def answer() -> tuple[int, Any, dict[str, str]]:
        return 201, {"ok": True}, {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await DeferredJSONResponse(answer)(scope, receive, send)

    sent, status = await _serve(app, caplog)
    assert status == 201 and sent[0]["status"] == 201
