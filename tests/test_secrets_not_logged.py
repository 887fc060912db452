"""A password link's token never reaches the logs: whoever reads them (a log platform, support)
must not be able to set an account's password with what they read."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fleet import wait_for
from tests.web.conftest import form_token

NGINX = Path(__file__).parent.parent / "deploy" / "nginx.conf"


def test_the_access_line_of_a_password_link_keeps_its_shape_but_not_its_token(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    email = f"logged-{uuid.uuid4().hex[:12]}@example.org"
    token = server.call(lambda s: s.web.invite(email, "roomy"))
    with caplog.at_level(logging.INFO, logger="lamplighter.access"):
        with httpx.Client(base_url=server.base_url) as http:
            page = http.get(f"/invite/{token}")
            done = http.post(
                f"/invite/{token}",
                data={"password": "Lantern-Quay-Harbour-81", "csrf_token": form_token(page.text)},
            )
            spent = http.get(f"/invite/{token}")
        assert (page.status_code, done.status_code, spent.status_code) == (200, 303, 404)

        def invite_lines() -> list[dict[str, object]] | None:
            lines = [
                vars(r)
                for r in caplog.records
                if r.name == "lamplighter.access" and str(vars(r)["path"]).startswith("/invite/")
            ]
            return lines if len(lines) >= 3 else None

        lines = wait_for(invite_lines, 10, "the three link requests are logged")
    assert sorted((line["method"], line["status"]) for line in lines) == [
        ("GET", 200),
        ("GET", 404),
        ("POST", 303),
    ]
    assert {line["path"] for line in lines} == {"/invite/…"}
    assert token not in caplog.text
    assert not [r for r in caplog.records if token in json.dumps(vars(r), default=str)]


def test_the_load_balancer_logs_neither_the_token_nor_the_referer_that_carries_it() -> None:
    config = re.sub(r"#.*", "", NGINX.read_text())
    (access_log,) = re.findall(r"^\s*access_log\s+([^;]+);", config, re.M)
    _, format_name = access_log.split()
    (logged,) = re.findall(rf"log_format\s+{format_name}\s+((?:'[^']*'\s*)+);", config, re.M | re.S)
    # The request line, the raw path and the Referer all carry the token; $logged_uri does not.
    assert not re.search(r"\$(request|request_uri|uri|args|http_referer)\b", logged)
    assert "$logged_uri" in logged
    assert re.search(r'~\^/invite/\s+"/invite/\.\.\.";', config)
