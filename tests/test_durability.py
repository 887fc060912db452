"""A process killed mid-answer loses nothing the user saw, beyond the last second.

The server checkpoints a streaming answer about once a second; on the next start, answers left
in progress are marked cut, keeping the text saved so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import MODEL, THREADS, free_port
from tests.test_cli import run, wait_ready


def start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "LAMPLIGHTER_DATA_DIR": str(data_dir),
        "LAMPLIGHTER_PORT": str(port),
        "LAMPLIGHTER_SHUTDOWN_TIMEOUT": "1",
        "LAMPLIGHTER_N_THREADS": str(THREADS),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lamplighter", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stream_essay(
    server: subprocess.Popen[str],
    port: int,
    key: str,
    signal_at: int,
    sent: signal.Signals,
    ready: Callable[[], bool] = lambda: True,
) -> str:
    """Stream a long answer; once the client has seen ``signal_at`` words and ``ready()`` holds,
    send ``sent`` to the server and read on until the server ends the stream. Returns the text
    the client saw."""
    body = {
        "model": MODEL,
        "stream": True,
        "temperature": 0.0,
        "max_tokens": 1800,
        "messages": [{"role": "user", "content": "Write a very long essay about lamps."}],
    }
    seen = ""
    signalled = False
    with (
        httpx.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=60,
        ) as response,
        contextlib.suppress(httpx.TransportError),
    ):
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("choices"):  # not the error event that ends a cut stream
                    seen += event["choices"][0]["delta"].get("content") or ""
            if len(seen.split()) >= signal_at and not signalled and ready():
                server.send_signal(sent)
                signalled = True
    return seen


def checkpointed(home: Path) -> bool:
    """Whether the answer being generated has a checkpoint in the store yet."""
    engine = create_engine(f"sqlite:///{home / 'lamplighter.db'}")
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT 1 FROM messages WHERE role = 'assistant' AND status = 'in_progress' "
                    "AND content != ''"
                )
            ).first()
    finally:
        engine.dispose()
    return found is not None


def test_a_killed_server_keeps_the_partial_answer_and_marks_it_cut(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port)
    try:
        wait_ready(port, server)
        key = run(tmp_path, "keys", "create", "admin@localhost").stdout.strip()
        # Killed once a checkpoint of the answer is on disk (about once a second).
        seen = stream_essay(server, port, key, 20, signal.SIGKILL, lambda: checkpointed(tmp_path))
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    restarted = start(tmp_path, port)
    try:
        wait_ready(port, restarted)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)

    engine = create_engine(f"sqlite:///{tmp_path / 'lamplighter.db'}")
    with engine.connect() as conn:
        status, finish, content, path_hash = conn.execute(
            text(
                "SELECT status, finish_reason, content, path_hash FROM messages "
                "WHERE role = 'assistant'"
            )
        ).one()
        usage = conn.execute(
            text("SELECT prompt_tokens, completion_tokens, finish_reason FROM usage")
        ).one()
    engine.dispose()
    assert (status, finish) == ("cut", "interrupted")
    assert content and seen.startswith(content)
    assert not path_hash.startswith("pending:")  # a client can continue from the kept text
    # The usage record survived the crash, with the tokens counted at the last checkpoint.
    assert usage[0] > 0 and usage[1] >= len(content.split()) // 2
    assert usage[2] == "interrupted"


def test_a_stopped_server_settles_the_answers_it_was_generating(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port)
    try:
        wait_ready(port, server)
        key = run(tmp_path, "keys", "create", "admin@localhost").stdout.strip()
        seen = stream_essay(server, port, key, 20, signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert server.wait(timeout=60) in {0, -signal.SIGTERM}
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    engine = create_engine(f"sqlite:///{tmp_path / 'lamplighter.db'}")
    with engine.connect() as conn:
        status, finish, content, tokens = conn.execute(
            text(
                "SELECT m.status, m.finish_reason, m.content, u.completion_tokens FROM messages m "
                "JOIN usage u ON u.message_id = m.id WHERE m.role = 'assistant'"
            )
        ).one()
    engine.dispose()
    assert (status, finish) == ("cut", "shutdown")
    assert content.startswith(seen)
    assert 20 <= tokens < 1800
