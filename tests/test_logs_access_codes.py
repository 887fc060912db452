"""The access line says why a request was refused (the error's code) and on which plan, without
secrets: an operator can grep 429s, 503 overloaded and bans apart."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import SCRIPTED, LiveServer
from tests.fleet import wait_for


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lamplighter.access"]


def _by_status(caplog: pytest.LogCaptureFixture) -> dict[int, dict] | None:
    """The access lines by status once three are written: a line is written after its answer
    has been sent, so the client can read the answer before the server logs it."""
    lines = [vars(r) for r in _lines(caplog)]
    return {line["status"]: line for line in lines} if len(lines) >= 3 else None


def test_a_refusal_logs_its_code_and_the_plan(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.call(lambda s: s.plans.put("onerpm", {"requests_per_minute": 1}, create=True))
    _, key = server.new_user(plan="onerpm")
    body = {"model": SCRIPTED, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    with caplog.at_level(logging.INFO, logger="lamplighter.access"):
        served = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=headers)
        refused = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=headers)
        unknown = httpx.get(server.base_url + "/v1/nowhere", headers=headers)
        logged = wait_for(lambda: _by_status(caplog), 10, "the three requests are logged")
    assert (served.status_code, refused.status_code, unknown.status_code) == (200, 429, 404)
    ok, limited, missing = logged[200], logged[429], logged[404]
    assert ok["status"] == 200 and ok["plan"] == "onerpm" and "code" not in ok
    assert limited["status"] == 429 and limited["code"] == "rate_limit_exceeded"
    assert limited["plan"] == "onerpm"
    assert missing["status"] == 404 and missing["code"] == "unknown_url"
    assert key not in caplog.text and "Rate limit reached" not in caplog.text
