"""Bad input gets a clear OpenAI-shaped error naming the bad parameter; nothing returns a 500."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, SCRIPTED, LiveServer

HELLO = [{"role": "user", "content": "hi"}]
HELLO_PART = {"type": "text", "text": "What is in this picture?"}


def post(server: LiveServer, key: str | None, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        server.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=60, **kwargs
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "top_p": -0.1}, "top_p"),
        ({"model": MODEL, "messages": HELLO, "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 100000}, "max_tokens"),
        (
            {"model": MODEL, "messages": HELLO, "max_completion_tokens": 5000},
            "max_completion_tokens",
        ),
        ({"model": MODEL, "messages": HELLO, "n": 2}, "n"),
        ({"model": MODEL, "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": HELLO, "seed": "x"}, "seed"),
        (
            {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": MODEL, "messages": HELLO, "wat": 1}, "wat"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(
    server: LiveServer, user: tuple[str, str], body: Any, param: str
) -> None:
    response = post(server, user[1], body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split("[")[0].split(".")[0] in error["message"] or error["code"]


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("body", "param", "code", "says"),
    [
        # OpenAI parameters not offered here: unsupported, and why, not "unrecognized".
        (
            {"model": MODEL, "messages": HELLO, "functions": [{"name": "f"}]},
            "functions",
            "unsupported_parameter",
            "Unsupported parameter: 'functions' is not supported here: give functions as 'tools'",
        ),
        (
            {"model": MODEL, "messages": HELLO, "prediction": {"type": "content", "content": "x"}},
            "prediction",
            "unsupported_parameter",
            "predicted outputs are not offered",
        ),
        (
            {"model": MODEL, "messages": [{"role": "assistant", "function_call": CALL}, *HELLO]},
            "messages[0].function_call",
            "unsupported_parameter",
            "give functions as 'tools'",
        ),
        # An image among the parts: that part is named, not "should be a valid string".
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [HELLO_PART, IMAGE]}]},
            "messages[0].content[1].type",
            None,
            "only text content parts are supported here, not 'image_url'",
        ),
        # Not a JSON object at all.
        ([1], None, None, "The request body must be a JSON object"),
    ],
)
def test_what_is_refused_says_why(
    server: LiveServer, user: tuple[str, str], body: Any, param: str, code: str, says: str
) -> None:
    response = post(server, user[1], body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert says in error["message"] and "None" not in error["message"]


def test_a_prompt_longer_than_the_context_is_400(server: LiveServer, user: tuple[str, str]) -> None:
    long = [{"role": "user", "content": "lamp " * 3000}]
    response = post(server, user[1], {"model": MODEL, "messages": long})
    assert response.status_code == 400
    assert error_of(response)["code"] == "context_length_exceeded"


def test_unparseable_json_is_400(server: LiveServer, user: tuple[str, str]) -> None:
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"authorization": f"Bearer {user[1]}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "JSON" in error_of(response)["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
@pytest.mark.parametrize("key", [None, "ll-not-a-real-key"])
def test_a_bad_key_is_401_before_an_unparseable_body_is_400(
    server: LiveServer, key: str | None, path: str
) -> None:
    """As OpenAI answers: the key is checked first, whatever the body."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    response = httpx.post(server.base_url + path, content=b"{not json", headers=headers)
    assert response.status_code == 401, response.text
    assert error_of(response)["code"] in ("missing_api_key", "invalid_api_key")


def test_a_key_without_the_chat_scope_is_403_before_an_unparseable_body_is_400(
    server: LiveServer,
) -> None:
    email, _ = server.new_user()
    key = server.call(lambda s: s.accounts.create_key(email, "feedback", scopes=["feedback"]))
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"authorization": f"Bearer {key.secret}", "content-type": "application/json"},
    )
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "insufficient_scope"


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_missing_or_wrong_key_is_401(server: LiveServer) -> None:
    response = post(server, None, {"model": MODEL, "messages": HELLO})
    assert response.status_code == 401
    assert error_of(response)["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        server.client("ll-not-a-real-key").chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-something-else").models.list()


def test_a_revoked_key_stops_working_at_once(server: LiveServer) -> None:
    email, key = server.new_user()
    client = server.client(key)
    assert client.models.list().data
    created = server.call(lambda s: s.accounts.create_key(email, "second"))
    second = server.client(created.secret)
    server.call(lambda s: s.accounts.revoke_key(created.id))
    with pytest.raises(openai.AuthenticationError):
        second.models.list()
    assert client.models.list().data  # the user's other key is untouched


def test_unknown_url_is_404_in_the_error_shape(server: LiveServer, user: tuple[str, str]) -> None:
    response = httpx.get(
        server.base_url + "/v1/nothing-here", headers={"authorization": f"Bearer {user[1]}"}
    )
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_url"


def test_wrong_method_is_405_in_the_error_shape(server: LiveServer) -> None:
    response = httpx.get(server.base_url + "/v1/responses")
    assert response.status_code == 405
    error = error_of(response)
    assert error["code"] == "method_not_allowed"
    assert error["message"] == "GET is not allowed on /v1/responses; use POST."


def test_content_parts_and_developer_role_are_understood(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=SCRIPTED,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}],
            },
        ],
    )
    assert answer.choices[0].message.content == "You said: two parts"


def test_the_defaults_that_frameworks_send_ask_for_nothing_and_are_accepted(
    client: openai.OpenAI,
) -> None:
    first = client.chat.completions.create(
        model=SCRIPTED,
        messages=[{"role": "user", "content": "hi"}],
        tools=[],
        tool_choice="auto",
        parallel_tool_calls=True,
        response_format={"type": "text"},
        logit_bias={},
        service_tier="auto",
        modalities=["text"],
        extra_body={"reasoning_effort": None, "audio": None},
    )
    assert first.choices[0].message.content == "You said: hi"
    # The answer sent back as the SDK made it: tool_calls, audio, annotations... all empty.
    again = client.chat.completions.create(
        model=SCRIPTED,
        messages=[
            {"role": "user", "content": "hi"},
            first.choices[0].message.model_dump(),  # type: ignore[list-item]
            {"role": "user", "content": "again"},
        ],
    )
    assert again.choices[0].message.content == "You said: again"
