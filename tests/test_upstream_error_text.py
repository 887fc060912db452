"""An upstream's 400 reaches the client as what helps it (the parameter, a context window's size
in OpenAI's words), never as the upstream's own words or the backend's name: those can carry
internal hosts, versions and secrets, and go to the operator's log instead."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.test_upstream import gateway_over_two

INTERNALS = "auth header was Bearer sk-upstream-SECRET-123; internal host gpu-7.corp.internal"


def _refusal(client: openai.OpenAI, prompt: str) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
    body = refused.value.body
    assert isinstance(body, dict)
    return body


def test_an_upstream_refusal_is_passed_on_without_its_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    said = {
        "plain": {"error": {"message": f"upstream rejected; {INTERNALS}", "param": "tools"}},
        "window": {
            "message": "This model's maximum context length is 4096 tokens. However, you "
            f"requested 5000 tokens. ({INTERNALS})",
            "param": f"messages {INTERNALS}",
        },
        "text": f"<html>nginx/1.25.3 at gpu-7.corp.internal: {INTERNALS}</html>",
    }
    now = {"kind": "plain"}

    def chat(_: str) -> web.Response:
        answer = said[now["kind"]]
        if isinstance(answer, str):
            return web.Response(status=400, text=answer)
        return web.json_response(answer, status=400)

    with (
        caplog.at_level(logging.WARNING, logger="lamplighter.engines.upstream"),
        gateway_over_two(tmp_path, chat) as live,
    ):
        _, key = live.new_user(plan="roomy")
        client = live.client(key)
        plain = _refusal(client, "refuse me plainly")
        now["kind"] = "window"
        window = _refusal(client, "refuse me for my length")
        now["kind"] = "text"
        text = _refusal(client, "refuse me in html")

    for answer in (plain, window, text):
        assert "SECRET" not in answer["message"] and "corp.internal" not in answer["message"]
        assert "'x'" not in answer["message"] and "'y'" not in answer["message"]
    assert plain["code"] == text["code"] == "backend_refused"
    assert plain["param"] == "tools" and "refused the request" in plain["message"]
    assert text["param"] is None and "nginx" not in text["message"]
    assert window == {
        "message": "This model's maximum context length is 4096 tokens. Please reduce the "
        "length of the messages or completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    # The operator finds the upstream's words, and which backend said them, in the log.
    logged = [r.getMessage() for r in caplog.records if "answered 400" in r.getMessage()]
    assert len(logged) == 3 and all(INTERNALS in line for line in logged)
    assert all(line.startswith(("backend x ", "backend y ")) for line in logged)
