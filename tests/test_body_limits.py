"""Oversized and malformed bodies get a clear error in the OpenAI shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SCRIPTED, LiveServer

LIMIT = 8 * 1024 * 1024


def _post(server: LiveServer, key: str, **kwargs: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(
        server.base_url + "/v1/chat/completions", headers=headers, timeout=60, **kwargs
    )  # type: ignore[arg-type]


def _body(content_bytes: int) -> bytes:
    return (
        b'{"model": "' + SCRIPTED.encode() + b'", "max_tokens": 1, "messages": '
        b'[{"role": "user", "content": "' + b"a" * content_bytes + b'"}]}'
    )


def test_an_oversized_body_is_refused_with_413(server: LiveServer, user: tuple[str, str]) -> None:
    response = _post(server, user[1], content=_body(LIMIT + 10))
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and str(LIMIT) in error["message"]


def test_an_oversized_chunked_body_is_refused_too(
    server: LiveServer, user: tuple[str, str]
) -> None:
    def chunks() -> Iterator[bytes]:
        body = _body(LIMIT + 10)
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = _post(server, user[1], content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_body_just_under_the_limit_is_served(server: LiveServer, user: tuple[str, str]) -> None:
    response = _post(server, user[1], content=_body(1000))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"\xff\xfe not utf-8",
        b'{"model": "x", "messages": "not a list"}',
        b"",
    ],
    ids=["deep-array", "deep-object", "not-utf8", "wrong-type", "empty"],
)
def test_malformed_bodies_get_400(server: LiveServer, user: tuple[str, str], body: bytes) -> None:
    response = _post(server, user[1], content=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_too_many_messages_get_400_naming_the_field(
    server: LiveServer, user: tuple[str, str]
) -> None:
    messages = [{"role": "user", "content": "x"}] * 2049
    response = _post(server, user[1], json={"model": SCRIPTED, "messages": messages})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_text_that_is_not_unicode_gets_400_not_500(
    server: LiveServer, user: tuple[str, str]
) -> None:
    body = b'{"model": "' + SCRIPTED.encode() + b'", "messages": [{"role": "user", "content": '
    response = _post(server, user[1], content=body + b'"half a pair: \\ud800"}]}')
    assert response.status_code == 400
    assert "lone surrogates" in response.json()["error"]["message"]


def test_oversized_headers_get_431(server: LiveServer, user: tuple[str, str]) -> None:
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=_body(10),
        headers={"authorization": f"Bearer {user[1]}", "x-padding": "a" * 40_000},
    )
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers_too_large"
