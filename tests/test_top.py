"""``lamplighter top`` against a running instance."""

from __future__ import annotations

import time
import uuid

from typer.testing import CliRunner

from lamplighter.cli import app
from lamplighter.telemetry.top import sparkline
from tests.conftest import SCRIPTED, LiveServer


def test_sparkline_scales_to_the_largest_value() -> None:
    assert sparkline([0, 1, 2, 4]) == "▁▂▄█"
    assert sparkline([0, 0]) == "▁▁"
    assert len(sparkline(range(100), width=60)) == 60


def test_top_shows_live_figures_of_a_running_instance(server: LiveServer) -> None:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.org"
    server.call(lambda s: s.accounts.create_user(email, admin=True))
    key = server.call(lambda s: s.accounts.create_key(email, "top")).secret
    client = server.client(server.new_user(plan="roomy")[1])
    client.chat.completions.create(model=SCRIPTED, messages=[{"role": "user", "content": "hi"}])
    started = time.monotonic()
    runner = CliRunner()
    while True:  # until the sampler has closed a point that counted the request
        result = runner.invoke(
            app, ["top", "--once", "--url", server.base_url, "--key", key], env={"COLUMNS": "140"}
        )
        assert result.exit_code == 0, result.output
        if "roomy" in result.output or time.monotonic() - started > 30:
            break
    screen = result.output
    assert "requests/s" in screen and "time to first token" in screen
    assert "roomy" in screen  # the plan's TTFT row
    assert f"scripted:{SCRIPTED}" in screen and "up" in screen


def test_top_refuses_a_key_that_is_not_an_admins(server: LiveServer) -> None:
    _, key = server.new_user(plan="roomy")
    result = CliRunner().invoke(app, ["top", "--once", "--url", server.base_url, "--key", key])
    assert result.exit_code == 1
    assert "not an admin API key" in result.output
