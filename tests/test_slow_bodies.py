"""A body sent too slowly is answered 408 at its deadline instead of holding a connection for as
long as its sender likes (a slowloris: a few hundred such connections stopped the server), while
everyone else is still served and real bodies, large ones included, are read as before."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lamplighter.api import middleware
from lamplighter.cli import KEEP_ALIVE_S
from tests.conftest import SCRIPTED, LiveServer, free_port
from tests.fleet import wait_for

GRACE_S = 2.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    """The body deadline cut to a couple of seconds, so a test waits that long, not 30 s."""
    monkeypatch.setattr(middleware, "BODY_GRACE_S", GRACE_S)
    return GRACE_S


def _trickle(port: int, path: str, content_type: str) -> socket.socket:
    """A request whose headers promise 1000 bytes of body, of which one is sent."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    return conn


def _answer(conn: socket.socket, wait_s: float) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body the server answers on ``conn`` within ``wait_s``."""
    conn.settimeout(wait_s)
    data = b""
    with conn:
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_a_body_slower_than_its_deadline_gets_408_and_others_are_served_meanwhile(
    server: LiveServer, short_deadline: float
) -> None:
    """No API key either: the body is waited for before anything else, so the deadline is
    what stops an outsider."""
    started = time.monotonic()
    slow = [_trickle(server.port, "/v1/chat/completions", "application/json") for _ in range(20)]
    health = httpx.get(server.base_url + "/healthz", timeout=5)
    assert health.status_code == 200
    for conn in slow:
        status, headers, body = _answer(conn, short_deadline + 10)
        assert status == 408
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < short_deadline + 10


def test_a_page_form_sent_too_slowly_gets_a_plain_408(
    server: LiveServer, short_deadline: float
) -> None:
    conn = _trickle(server.port, "/login", "application/x-www-form-urlencoded")
    status, headers, body = _answer(conn, short_deadline + 10)
    assert status == 408
    assert headers["content-type"].startswith("text/plain")
    assert b"did not arrive in time" in body and not body.startswith(b"{")


def test_a_large_body_within_the_limits_is_still_served(
    server: LiveServer, user: tuple[str, str]
) -> None:
    """6 MiB, with a Content-Length and chunked, read through the deadline as ever."""
    prompt = "large-body-" + "z" * (6 * 1024 * 1024)
    body = json.dumps(
        {"model": SCRIPTED, "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]}
    ).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = {"authorization": f"Bearer {user[1]}", "content-type": "application/json"}
    url = server.base_url + "/v1/chat/completions"
    whole = httpx.post(url, content=body, headers=headers, timeout=60)
    assert whole.status_code == 200, whole.text
    chunked = httpx.post(url, content=chunks(), headers=headers, timeout=60)
    assert chunked.status_code == 200, chunked.text


def test_a_flood_of_slow_bodies_is_refused_503_and_the_server_keeps_answering(
    tmp_path: Path,
) -> None:
    """`lamplighter serve` with 256 open files: 300 connections trickling bodies once ran it
    out of sockets (/healthz: connection reset). It holds 128 of them and answers the rest 503
    at once, so /healthz is answered throughout and served again once they go."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")},
        "LAMPLIGHTER_DATA_DIR": str(tmp_path),
        "LAMPLIGHTER_PORT": str(port),
        "LAMPLIGHTER_EMBEDDED_ENGINE": "false",
        "LAMPLIGHTER_DRAIN_GRACE": "0",
    }
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with (tmp_path / "server.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lamplighter", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        )
    url = f"http://127.0.0.1:{port}/healthz"

    def health() -> int | None:
        assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        try:
            return httpx.get(url, timeout=5).status_code
        except httpx.TransportError:
            return None

    slow: list[socket.socket] = []
    try:
        wait_for(lambda: health() == 200, 60, "the server answers /healthz")
        for _ in range(300):
            slow.append(_trickle(port, "/v1/chat/completions", "application/json"))
        assert health() in {200, 503}
        refused = [s for s in slow[-50:] if _answer(s, 10)[0] == 503]
        assert len(refused) == 50
        assert health() in {200, 503}
        for conn in slow:
            conn.close()
        wait_for(lambda: health() == 200, 30, "/healthz is served again")
    finally:
        for conn in slow:
            conn.close()
        process.terminate()
        process.wait(timeout=30)


def test_the_load_balancer_reads_requests_whole_and_cuts_off_trickling_clients() -> None:
    """deploy/nginx.conf once streamed a slow body through to a gateway (request buffering off,
    900 s to send it on, 60 s allowed between a client's bytes)."""
    config = re.sub(r"#.*", "", (ROOT / "deploy" / "nginx.conf").read_text())
    directives = dict(re.findall(r"^\s*(\w+)\s+([^;{]+);", config, re.M))
    assert directives["proxy_buffering"] == "off"  # answers still stream
    assert directives.get("proxy_request_buffering", "on") == "on"
    for name in ("client_header_timeout", "client_body_timeout", "proxy_send_timeout"):
        seconds = re.fullmatch(r"(\d+)s", directives[name])
        assert seconds is not None and int(seconds.group(1)) <= 60, name
    assert int(directives["client_body_timeout"].removesuffix("s")) <= 15
    # The pool's idle connections are dropped before the gateway's keep-alive ends.
    assert int(directives["keepalive_timeout"].removesuffix("s")) < KEEP_ALIVE_S
