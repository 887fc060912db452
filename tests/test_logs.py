"""Logs: one JSON object a line, request ids in and out, and never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import MODEL, SCRIPTED, THREADS, LiveServer, free_port
from tests.test_cli import run, wait_ready


def test_request_ids_are_taken_from_the_client_or_made_up(server: LiveServer) -> None:
    mine = httpx.get(server.base_url + "/healthz", headers={"x-request-id": "trace-42.a"})
    assert mine.headers["x-request-id"] == "trace-42.a"
    made = httpx.get(server.base_url + "/healthz", headers={"x-request-id": "bad id\twith tabs"})
    assert len(made.headers["x-request-id"]) == 32
    assert (
        made.headers["x-request-id"]
        != httpx.get(server.base_url + "/healthz").headers["x-request-id"]
    )


def test_logs_are_json_with_request_ids_and_no_secrets(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = {
        **os.environ,
        "LAMPLIGHTER_DATA_DIR": str(tmp_path),
        "LAMPLIGHTER_PORT": str(port),
        "LAMPLIGHTER_LOG_LEVEL": "debug",
        "LAMPLIGHTER_DRAIN_GRACE": "0",  # no load balancer to wait for when it stops
        "LAMPLIGHTER_N_THREADS": str(THREADS),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "lamplighter", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    try:
        wait_ready(port, server)
        password = "a-secret-passphrase-123"
        created = run(
            tmp_path,
            "users",
            "create",
            "ada@example.org",
            "--password-stdin",
            stdin=password + "\n",
        )
        assert created.returncode == 0
        key = run(tmp_path, "keys", "create", "ada@example.org").stdout.strip()
        base = f"http://127.0.0.1:{port}/v1"
        headers = {"authorization": f"Bearer {key}", "x-request-id": "req-from-client"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (
            httpx.post(
                base + "/chat/completions", json=body, headers=headers, timeout=60
            ).status_code
            == 200
        )
        # A key pasted into a prompt is detected and logged by id, never by value.
        leaked = {**body, "model": MODEL, "messages": [{"role": "user", "content": key}]}
        response = httpx.post(base + "/chat/completions", json=leaked, headers=headers, timeout=60)
        assert "x-lamplighter-warning" in response.headers
        # A browser login, right and wrong: neither the password nor the session cookie is
        # logged.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as web:
            page = web.get("/login").text
            token = page.split('name="csrf_token" value="')[1].split('"')[0]
            for attempt in ("not-the-password", password):
                web.post(
                    "/login",
                    data={"email": "ada@example.org", "password": attempt, "csrf_token": token},
                )
            cookie = web.cookies["lamplighter_session"]
        bad = {"authorization": "Bearer ll-wrong-key-that-must-not-be-logged"}
        assert httpx.get(base + "/models", headers=bad).status_code == 401
        assert (
            httpx.post(
                base + "/chat/completions", json={**body, "model": SCRIPTED}, headers=headers
            ).status_code
            == 404
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    text = (tmp_path / "server.log").read_text()
    for secret in (
        key,
        password,
        cookie,
        "not-the-password",
        "ll-wrong-key-that-must-not-be-logged",
        "Bearer",
    ):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    access = [line for line in lines if line["logger"] == "lamplighter.access"]
    ours = [line for line in access if line.get("request_id") == "req-from-client"]
    assert {(line["path"], line["status"]) for line in ours} == {
        ("/v1/chat/completions", 200),
        ("/v1/chat/completions", 404),
    }
    assert any(line["status"] == 401 and len(line["request_id"]) == 32 for line in access)
    assert any(line["message"] == "api key found in a prompt" for line in lines)
