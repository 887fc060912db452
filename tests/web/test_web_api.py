"""The web chat over HTTP: logins, sessions and CSRF, the conversation tree the page walks,
ratings, deletion, search, and that no user reaches another's data (404, never 403)."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from lamplighter.exceptions import Conflict
from lamplighter.store.models import Message, Rating, Usage, User, WebSession
from tests.conftest import LiveServer
from tests.test_streams import wait_until
from tests.web.conftest import Browserless, Person, add_chats, form_token, new_person


def test_wrong_password_and_unknown_email_get_the_same_answer(
    server: LiveServer, person: Person
) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        token = form_token(http.get("/login").text)
        wrong = http.post(
            "/login", data={"email": person.email, "password": "nope-nope", "csrf_token": token}
        )
        unknown = http.post(
            "/login",
            data={"email": "nobody@example.org", "password": "nope-nope", "csrf_token": token},
        )
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong email or password." in wrong.text
    assert "Wrong email or password." in unknown.text
    assert "lamplighter_session" not in wrong.headers.get("set-cookie", "")


def test_login_sets_a_hardened_session_cookie_and_logout_ends_the_session(
    server: LiveServer, person: Person
) -> None:
    web = Browserless(server.base_url)
    response = web.login(person)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"].lower()
    assert "lamplighter_session=" in cookie
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # plain HTTP here; behind TLS it is Secure (next test)
    assert web.api("GET", "/me").json()["email"] == person.email
    token = web.http.cookies["lamplighter_session"]

    page = web.http.get("/").text
    logout = web.http.post("/logout", data={"csrf_token": form_token(page)})
    assert logout.status_code == 303 and logout.headers["location"] == "/login"
    # The old cookie is dead on the server, not merely forgotten by this browser.
    replay = httpx.get(
        server.base_url + "/api/me", cookies={"lamplighter_session": token}, timeout=30
    )
    assert replay.status_code == 401
    web.close()


def test_session_cookie_is_secure_behind_tls(server: LiveServer, person: Person) -> None:
    """Behind a TLS proxy (X-Forwarded-Proto from a trusted address) every cookie is Secure."""
    proxied = {"x-forwarded-proto": "https"}
    with httpx.Client(base_url=server.base_url, headers=proxied) as http:
        page = http.get("/login")
        assert "secure" in page.headers["set-cookie"].lower()
        token = form_token(page.text)
        # A Secure cookie never travels over plain HTTP; the proxy's browser would send it.
        response = http.post(
            "/login",
            data={"email": person.email, "password": person.password, "csrf_token": token},
            headers={"cookie": f"lamplighter_csrf={token}"},
        )
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_forms_and_api_calls_without_the_csrf_token_are_refused(
    server: LiveServer, person: Person, web: Browserless
) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        forged = http.post("/login", data={"email": person.email, "password": person.password})
    assert forged.status_code == 403
    assert "lamplighter_session" not in forged.headers.get("set-cookie", "")

    no_header = web.http.post("/api/chat", json={"content": "hi"})
    wrong = web.http.post("/api/chat", json={"content": "hi"}, headers={"x-csrf-token": "x"})
    for response in (no_header, wrong):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "csrf_failed"


def test_pages_need_a_login_and_carry_security_headers(server: LiveServer) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        home = http.get("/")
        assert home.status_code == 303 and home.headers["location"] == "/login"
        assert http.get("/api/me").status_code == 401
        page = http.get("/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in page.text  # no inline script anywhere


def test_signup_is_off_by_default(server: LiveServer) -> None:
    assert httpx.get(server.base_url + "/signup").status_code == 404


def test_an_invite_works_once(server: LiveServer) -> None:
    email = f"invited-{uuid.uuid4().hex[:12]}@example.org"
    token = server.call(lambda s: s.web.invite(email, "roomy"))
    with httpx.Client(base_url=server.base_url) as http:
        page = http.get(f"/invite/{token}")
        assert page.status_code == 200 and email in page.text
        short = http.post(
            f"/invite/{token}", data={"password": "short", "csrf_token": form_token(page.text)}
        )
        assert short.status_code == 400 and "at least 8 characters" in short.text
        accepted = http.post(
            f"/invite/{token}",
            data={"password": "a long enough password", "csrf_token": form_token(page.text)},
        )
        assert accepted.status_code == 303
        assert http.get("/api/me").json()["email"] == email
    assert httpx.get(f"{server.base_url}/invite/{token}").status_code == 404
    again = Browserless(server.base_url)
    assert again.login(Person(email, "a long enough password")).status_code == 303
    again.close()


def test_inviting_again_replaces_a_lost_link_and_a_reset_link_sets_a_new_password(
    server: LiveServer,
) -> None:
    """An invite not yet accepted can be sent again (the first link stops working); once the
    account has a password, inviting is refused and a reset link is the way: its page says so,
    setting the new password ends the account's other sessions, and the old password stops
    working."""
    email = f"invited-{uuid.uuid4().hex[:12]}@example.org"
    lost = server.call(lambda s: s.web.invite(email, "roomy"))
    fresh = server.call(lambda s: s.web.invite(email))
    assert httpx.get(f"{server.base_url}/invite/{lost}").status_code == 404
    with httpx.Client(base_url=server.base_url) as http:
        page = http.get(f"/invite/{fresh}")
        assert "Create account" in page.text and "Already set up?" in page.text
        http.post(
            f"/invite/{fresh}",
            data={"password": "the first password", "csrf_token": form_token(page.text)},
        )
    with pytest.raises(Conflict, match="reset-password"):
        server.call(lambda s: s.web.invite(email))

    elsewhere = Browserless(server.base_url)
    assert elsewhere.login(Person(email, "the first password")).status_code == 303
    reset = server.call(lambda s: s.web.password_link(email))
    with httpx.Client(base_url=server.base_url) as http:
        page = http.get(f"/invite/{reset}")
        assert "Choose a new password" in page.text and "Set password" in page.text
        # Not "Already set up?": the account was set up long ago; its owner forgot the password.
        assert "Already set up?" not in page.text and "Remembered it after all?" in page.text
        done = http.post(
            f"/invite/{reset}",
            data={"password": "the second password", "csrf_token": form_token(page.text)},
        )
        assert done.status_code == 303 and http.get("/api/me").json()["email"] == email
    assert elsewhere.api("GET", "/me").status_code == 401  # logged out everywhere else
    elsewhere.close()
    again = Browserless(server.base_url)
    assert again.login(Person(email, "the first password")).status_code != 303
    assert again.login(Person(email, "the second password")).status_code == 303
    again.close()


def test_me_shows_the_plan_and_what_is_left_of_it(server: LiveServer) -> None:
    web = Browserless(server.base_url)
    web.login(new_person(server, plan="plus"))
    me = web.api("GET", "/me").json()
    assert me["plan"] == "plus"
    assert me["limits"]["requests_per_minute"] == {"limit": 60, "remaining": 60}
    web.chat(content="count me")
    after = web.api("GET", "/me").json()["limits"]
    assert after["requests_per_minute"]["remaining"] == 59
    assert after["tokens_per_day"]["remaining"] < after["tokens_per_day"]["limit"]
    assert {r["id"] for r in me["rating_reasons"]["down"]} >= {"not_factual", "unsafe", "too_long"}
    assert {r["id"] for r in me["rating_reasons"]["up"]} >= {"accurate", "helpful"}
    web.close()


def test_a_conversation_streams_and_is_stored_as_a_tree(web: Browserless) -> None:
    events = web.chat(content="hello there")
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert names.count("delta") >= 3  # one per token
    start, done = events[0][1], events[-1][1]["message"]
    conversation = start["conversation_id"]
    assert start["title"] == "hello there"
    assert done["content"] == "You said: hello there"
    assert done["status"] == "complete"
    assert "".join(p["text"] for n, p in events if n == "delta") == done["content"]

    question = start["user_message"]["id"]
    follow = web.chat(conversation_id=conversation, parent_id=done["id"], content="and then")
    edit = web.chat(conversation_id=conversation, parent_id=None, content="hello again")
    regenerate = web.chat(conversation_id=conversation, parent_id=question, content=None)

    tree = web.tree(conversation)
    by_id = {m["id"]: m for m in tree["messages"]}
    roots = [m for m in tree["messages"] if m["parent_id"] is None]
    assert [m["content"] for m in roots] == ["hello there", "hello again"]  # the edit: a sibling
    answers = [m for m in tree["messages"] if m["parent_id"] == question]
    assert len(answers) == 2  # the regeneration: a sibling answer
    assert regenerate[-1][1]["message"]["id"] == answers[1]["id"]
    followed = by_id[follow[0][1]["user_message"]["id"]]
    assert followed["parent_id"] == done["id"]
    assert edit[0][1]["conversation_id"] == conversation
    # The last exchange's answer is the branch shown now.
    assert tree["current_leaf_id"] == answers[1]["id"]
    # Every node hangs in this one conversation; the sidebar lists it once.
    listed = web.api("GET", "/conversations").json()["data"]
    assert [c["id"] for c in listed].count(conversation) == 1


def test_the_branch_shown_is_remembered(web: Browserless) -> None:
    first = web.chat(content="pick a branch")
    conversation, question = first[0][1]["conversation_id"], first[0][1]["user_message"]["id"]
    web.chat(conversation_id=conversation, parent_id=question)
    earlier = first[-1][1]["message"]["id"]
    changed = web.api("PATCH", f"/conversations/{conversation}", json={"current_leaf_id": earlier})
    assert changed.status_code == 200
    assert web.tree(conversation)["current_leaf_id"] == earlier


def _pages(web: Browserless, limit: int, **params: str) -> list[list[str]]:
    """The sidebar's titles a page at a time, each page asked for with the one before's cursor,
    as "Show more" does."""
    pages, cursor = [], None
    while True:
        asked = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        listed = web.api("GET", "/conversations", params=asked).json()
        pages.append([c["title"] for c in listed["data"]])
        assert listed["has_more"] == (listed["next_cursor"] is not None)
        if not listed["has_more"]:
            return pages
        cursor = listed["next_cursor"]


def test_conversations_are_listed_a_page_at_a_time(
    server: LiveServer, web: Browserless, person: Person
) -> None:
    titles = add_chats(server, person, 5)
    assert _pages(web, 2) == [titles[0:2], titles[2:4], titles[4:5]]
    everything = web.api("GET", "/conversations").json()
    assert [c["title"] for c in everything["data"]] == titles
    assert not everything["has_more"] and everything["next_cursor"] is None
    # A search pages the same way, through its own matches only.
    web.chat(content="about zebras")
    assert _pages(web, 2, q="chat")[1:] == [titles[2:4], titles[4:5]]


def test_the_next_page_goes_on_from_the_last_chat_whatever_moved_meanwhile(
    server: LiveServer, web: Browserless, person: Person
) -> None:
    """Between two pages another tab answers in a chat further down (it moves to the top), and
    deletes one already listed: no chat comes twice, none that stayed below is skipped."""
    titles = add_chats(server, person, 6)
    ids = {c["title"]: c["id"] for c in web.api("GET", "/conversations").json()["data"]}
    other = Browserless(server.base_url)
    assert other.login(person).status_code == 303

    def page(cursor: str | None) -> tuple[list[str], str | None]:
        asked = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        listed = web.api("GET", "/conversations", params=asked).json()
        return [c["title"] for c in listed["data"]], listed["next_cursor"]

    first, cursor = page(None)
    other.chat(conversation_id=ids["Chat 004"], content="meanwhile")
    second, cursor = page(cursor)
    assert other.api("DELETE", f"/conversations/{ids['Chat 000']}").status_code == 204
    third, cursor = page(cursor)
    other.close()
    assert (first, second, third) == (titles[0:2], titles[2:4], titles[5:6])
    assert cursor is None
    # The chat answered meanwhile is above the pages read: on top of the list, read again.
    assert page(None)[0] == ["Chat 004", "Chat 001"]


def test_a_cursor_the_list_did_not_give_is_a_clear_400(web: Browserless) -> None:
    out_of_time = base64.urlsafe_b64encode(b"\x7f" * 8 + uuid.uuid4().bytes).decode()
    for bad in ("nonsense", "AAAA$AAA", "é", "A" * 101, out_of_time):
        response = web.api("GET", "/conversations", params={"cursor": bad})
        assert response.status_code == 400, bad
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert (error["param"], error["code"]) == ("cursor", "invalid_cursor")
        assert "start again from the first page" in error["message"]


def test_rename_search_and_newest_first(web: Browserless) -> None:
    older = web.chat(content="about zebras")[0][1]["conversation_id"]
    newer = web.chat(content="about otters")[0][1]["conversation_id"]
    listed = [c["id"] for c in web.api("GET", "/conversations").json()["data"]]
    assert listed.index(newer) < listed.index(older)

    renamed = web.api("PATCH", f"/conversations/{older}", json={"title": "  Stripes  "})
    assert renamed.json()["title"] == "Stripes"
    assert web.api("PATCH", f"/conversations/{older}", json={"title": "  "}).status_code == 400
    # Search finds titles and the text of any message, answers included.
    assert [c["id"] for c in web.api("GET", "/conversations?q=stripes").json()["data"]] == [older]
    found = web.api("GET", "/conversations", params={"q": "You said: about OTTERS"}).json()
    assert [c["id"] for c in found["data"]] == [newer]
    assert web.api("GET", "/conversations", params={"q": "%"}).json()["data"] == []


def test_ratings_are_stored_changed_and_removed(server: LiveServer, web: Browserless) -> None:
    answer = web.chat(content="rate me")[-1][1]["message"]
    conversation = web.api("GET", "/conversations").json()["data"][0]["id"]
    rated = web.api(
        "PUT",
        f"/messages/{answer['id']}/rating",
        json={"rating": -1, "reasons": ["too_long", "not_factual"], "comment": " wordy "},
    )
    assert rated.json() == {
        "rating": -1,
        "reasons": ["not_factual", "too_long"],
        "comment": "wordy",
    }
    changed = web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": 1})
    assert changed.json() == {"rating": 1, "reasons": [], "comment": None}
    shown = {m["id"]: m for m in web.tree(conversation)["messages"]}[answer["id"]]
    assert shown["rating"] == {"rating": 1, "reasons": [], "comment": None}

    bad = web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": 1, "reasons": ["meh"]})
    assert bad.status_code == 400

    liked = web.api(
        "PUT",
        f"/messages/{answer['id']}/rating",
        json={"rating": 1, "reasons": ["helpful", "accurate"]},
    )
    assert liked.json()["reasons"] == ["accurate", "helpful"]
    for rating, reason in ((1, "not_factual"), (-1, "accurate")):
        crossed = web.api(
            "PUT",
            f"/messages/{answer['id']}/rating",
            json={"rating": rating, "reasons": [reason]},
        )
        assert crossed.status_code == 400
        error = crossed.json()["error"]
        assert error["param"] == "reasons"
        assert reason in error["message"] and "thumbs-" in error["message"]
    assert web.api("PUT", f"/messages/{answer['id']}/rating", json={"rating": 0}).status_code == 400
    assert web.api("DELETE", f"/messages/{answer['id']}/rating").status_code == 204
    assert {m["id"]: m for m in web.tree(conversation)["messages"]}[answer["id"]]["rating"] is None


def test_delete_really_deletes(server: LiveServer, web: Browserless) -> None:
    events = web.chat(content="forget this")
    conversation, answer = events[0][1]["conversation_id"], events[-1][1]["message"]["id"]
    web.api("PUT", f"/messages/{answer}/rating", json={"rating": 1})
    assert web.api("DELETE", f"/conversations/{conversation}").status_code == 204
    assert web.api("GET", f"/conversations/{conversation}").status_code == 404

    async def left(services: Any) -> tuple[int | None, int | None]:
        async with services.db.transaction() as session:
            messages = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.conversation_id == uuid.UUID(conversation))
            )
            ratings = await session.scalar(
                select(func.count())
                .select_from(Rating)
                .where(Rating.message_id == uuid.UUID(answer))
            )
            return messages, ratings

    assert server.call(left) == (0, 0)


def test_nobody_reaches_another_users_conversation(
    server: LiveServer, web: Browserless, stranger: Browserless
) -> None:
    events = web.chat(content="my secret")
    conversation = events[0][1]["conversation_id"]
    question = events[0][1]["user_message"]["id"]
    answer = events[-1][1]["message"]["id"]
    attempts = {
        "read": stranger.api("GET", f"/conversations/{conversation}"),
        "rename": stranger.api("PATCH", f"/conversations/{conversation}", json={"title": "x"}),
        "move leaf": stranger.api(
            "PATCH", f"/conversations/{conversation}", json={"current_leaf_id": answer}
        ),
        "delete": stranger.api("DELETE", f"/conversations/{conversation}"),
        "rate": stranger.api("PUT", f"/messages/{answer}/rating", json={"rating": -1}),
        "unrate": stranger.api("DELETE", f"/messages/{answer}/rating"),
        "continue": stranger.http.post(
            "/api/chat",
            json={"conversation_id": conversation, "parent_id": answer, "content": "hi"},
            headers={"x-csrf-token": stranger.csrf},
        ),
        "regenerate": stranger.http.post(
            "/api/chat",
            json={"conversation_id": conversation, "parent_id": question},
            headers={"x-csrf-token": stranger.csrf},
        ),
        "page": stranger.http.get(f"/c/{conversation}"),
    }
    for what, response in attempts.items():
        assert response.status_code == 404, what
    assert "my secret" not in stranger.api("GET", "/conversations?q=secret").text
    # Nothing changed for the owner.
    tree = web.tree(conversation)
    assert tree["title"] == "my secret" and len(tree["messages"]) == 2
    assert all(m["rating"] is None for m in tree["messages"])


def test_a_message_id_from_another_conversation_is_not_a_parent(web: Browserless) -> None:
    one = web.chat(content="first chat")
    two = web.chat(content="second chat")
    response = web.http.post(
        "/api/chat",
        json={
            "conversation_id": two[0][1]["conversation_id"],
            "parent_id": one[-1][1]["message"]["id"],
            "content": "crossed",
        },
        headers={"x-csrf-token": web.csrf},
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"content": "   "}, "content"),
        ({"parent_id": "01a213ea-41d2-75e5-a90d-49afaaacd726", "content": "x"}, "conversation_id"),
        ({"content": "x", "model": "no-such-model"}, "model"),
        ({"content": "x", "temperature": 2}, "temperature"),
    ],
)
def test_bad_chat_requests_get_clear_errors(
    web: Browserless, body: dict[str, Any], param: str
) -> None:
    response = web.http.post("/api/chat", json=body, headers={"x-csrf-token": web.csrf})
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param


def test_regenerating_needs_a_question(web: Browserless) -> None:
    events = web.chat(content="q")
    response = web.http.post(
        "/api/chat",
        json={
            "conversation_id": events[0][1]["conversation_id"],
            "parent_id": events[-1][1]["message"]["id"],
        },
        headers={"x-csrf-token": web.csrf},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "parent_id"


def test_a_client_that_leaves_while_its_question_is_stored_leaves_no_answer_in_progress(
    server: LiveServer, person: Person, web: Browserless
) -> None:
    """Send, then leave at once (Escape right after Enter): the client is gone while the
    question's write waits its turn. The write lands all the same; its answer must then read
    cut, not "in progress" for ever, and nothing is charged."""

    def in_use() -> int:
        async def count(services: Any) -> int:
            return sum(pool.in_use for pool in services.chat.admission.pools.values())

        return server.call(count)

    with server.writer_held():
        body = json.dumps({"content": "Gone at once", "model": "scripted-echo"}).encode()
        cookies = "; ".join(f"{name}={value}" for name, value in web.http.cookies.items())
        port = int(server.base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(
                b"POST /api/chat HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                + f"x-csrf-token: {web.csrf}\r\ncookie: {cookies}\r\n".encode()
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_until(lambda: in_use() == 1)  # admitted, its question waiting for the writer
        wait_until(lambda: in_use() == 0)  # the server saw it leave and gave the slot back

    def settled_answer() -> tuple[str, str, int, str] | None:
        async def load(services: Any) -> tuple[str, str, int, str] | None:
            async with services.db.transaction() as session:
                row = (
                    await session.execute(
                        select(
                            Message.status,
                            Message.content,
                            Usage.prompt_tokens,
                            Usage.finish_reason,
                        )
                        .join(Usage, Usage.message_id == Message.id)
                        .join(User, User.id == Message.user_id)
                        .where(User.email == person.email, Message.role == "assistant")
                    )
                ).first()
            return None if row is None or row[0] == "in_progress" else tuple(row)  # type: ignore[return-value]

        return server.call(load)

    assert wait_until(settled_answer) == ("cut", "", 0, "cancelled")


def test_sessions_are_stored_hashed(server: LiveServer, web: Browserless) -> None:
    token = web.http.cookies["lamplighter_session"]

    async def stored(services: Any) -> list[str]:
        async with services.db.transaction() as session:
            return list(await session.scalars(select(WebSession.token_hash)))

    hashes = server.call(stored)
    assert hashes and token not in hashes


def test_a_conversation_longer_than_the_context_keeps_going(web: Browserless) -> None:
    """The scripted model's context is 4096 tokens (a word each): the second question does not
    fit with the first exchange, so the oldest turns are left out of the prompt (not the
    store), and the answer still comes."""
    first = web.chat(content="word " * 3000)
    conversation, answer = first[0][1]["conversation_id"], first[-1][1]["message"]
    second = web.chat(conversation_id=conversation, parent_id=answer["id"], content="tail " * 1500)
    done = second[-1]
    assert done[0] == "done" and done[1]["message"]["status"] == "complete"
    tree = web.tree(conversation)
    assert [m["role"] for m in tree["messages"]] == ["user", "assistant", "user", "assistant"]
    assert tree["messages"][2]["parent_id"] == answer["id"]


def test_the_api_continues_a_conversation_started_in_the_browser(
    server: LiveServer, person: Person, web: Browserless
) -> None:
    """Both doors lead to one tree: the path hashes the page stores are the ones the stateless
    API matches."""
    events = web.chat(content="started on the web")
    conversation = events[0][1]["conversation_id"]
    key = server.call(lambda s: s.accounts.create_key(person.email, "test")).secret
    server.client(key).chat.completions.create(
        model="scripted-echo",
        messages=[
            {"role": "user", "content": "started on the web"},
            {"role": "assistant", "content": events[-1][1]["message"]["content"]},
            {"role": "user", "content": "and went on over the API"},
        ],
    )
    tree = web.tree(conversation)
    assert [m["content"] for m in tree["messages"]][2:] == [
        "and went on over the API",
        "You said: and went on over the API",
    ]
    assert len(web.api("GET", "/conversations").json()["data"]) == 1


def test_log_out_everywhere_ends_every_session_of_the_account(
    server: LiveServer, person: Person
) -> None:
    laptop, phone = Browserless(server.base_url), Browserless(server.base_url)
    laptop.login(person)
    phone.login(person)
    first_cookie = laptop.http.cookies["lamplighter_session"]
    assert first_cookie != phone.http.cookies["lamplighter_session"]  # a new session per login
    page = phone.http.get("/").text
    response = phone.http.post("/logout?everywhere=1", data={"csrf_token": form_token(page)})
    assert response.status_code == 303
    assert laptop.api("GET", "/me").status_code == 401
    assert phone.api("GET", "/me").status_code == 401
    laptop.close()
    phone.close()
