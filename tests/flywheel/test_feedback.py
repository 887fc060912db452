"""Feedback over the API, consent, and deletions recorded for incremental exports."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select

from lamplighter.store.models import Deletion, Rating
from tests.conftest import SCRIPTED, LiveServer
from tests.web.conftest import Browserless, new_person


def _feedback(server: LiveServer, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        server.base_url + "/api/feedback", json=body, headers={"authorization": f"Bearer {key}"}
    )


def test_feedback_over_the_api_rates_the_callers_completion(server: LiveServer) -> None:
    _, key = server.new_user(plan="roomy")
    completion = server.client(key).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "rate me over the api"}]
    )
    first = _feedback(
        server, key, message_id=completion.id, rating=-1, reasons=["too_long"], comment="meh"
    )
    assert first.status_code == 200
    assert first.json() == {
        "message_id": completion.id,
        "rating": -1,
        "reasons": ["too_long"],
        "comment": "meh",
    }
    changed = _feedback(server, key, message_id=completion.id, rating=1)
    assert changed.json()["rating"] == 1

    async def stored(services: Any) -> list[int]:
        async with services.db.transaction() as session:
            rows = await session.scalars(select(Rating.rating).where(Rating.comment.is_(None)))
            return list(rows)

    assert 1 in server.call(stored)


def test_feedback_on_someone_elses_or_no_completion_is_404(server: LiveServer) -> None:
    _, owner = server.new_user(plan="roomy")
    _, other = server.new_user(plan="roomy")
    completion = server.client(owner).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "mine"}]
    )
    assert _feedback(server, other, message_id=completion.id, rating=1).status_code == 404
    missing = f"chatcmpl-{uuid.uuid4().hex}"
    assert _feedback(server, owner, message_id=missing, rating=1).status_code == 404
    assert _feedback(server, owner, message_id="nonsense", rating=1).status_code == 404
    bad = _feedback(server, owner, message_id=completion.id, rating=5)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"


def test_feedback_needs_the_feedback_scope(server: LiveServer) -> None:
    email, _ = server.new_user(plan="roomy")
    chat_only = server.call(lambda s: s.accounts.create_key(email, scopes=["chat"])).secret
    completion = server.client(chat_only).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "scoped"}]
    )
    refused = _feedback(server, chat_only, message_id=completion.id, rating=1)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"


def _deletions(server: LiveServer, subject: str) -> list[str]:
    async def found(services: Any) -> list[str]:
        async with services.db.transaction() as session:
            rows = await session.scalars(
                select(Deletion.kind).where(Deletion.subject_id == uuid.UUID(subject))
            )
            return list(rows)

    return server.call(found)


def test_consent_defaults_to_the_organisation_and_withdrawing_it_is_logged(
    server: LiveServer,
) -> None:
    person = new_person(server)
    web = Browserless(server.base_url)
    web.login(person)
    assert web.api("GET", "/me/consent").json() == {
        "use_for_training": False,
        "chosen": False,
        "organisation_default": False,
    }
    assert web.api("PUT", "/me/consent", json={"use_for_training": True}).json()["use_for_training"]
    me = web.api("PUT", "/me/consent", json={"use_for_training": False}).json()
    assert me == {"use_for_training": False, "chosen": True, "organisation_default": False}
    assert web.api("PUT", "/me/consent", json={"use_for_training": "yes"}).status_code == 400
    web.close()


def test_deleting_a_conversation_or_an_account_is_logged_by_id(server: LiveServer) -> None:
    person = new_person(server)
    web = Browserless(server.base_url)
    web.login(person)
    conversation = web.chat(content="delete me")[0][1]["conversation_id"]
    assert web.api("DELETE", f"/conversations/{conversation}").status_code == 204
    assert _deletions(server, conversation) == ["conversation"]
    web.close()
    admin_email = f"ops-{uuid.uuid4().hex[:8]}@example.org"
    server.call(lambda s: s.accounts.create_user(admin_email, admin=True))
    admin_key = server.call(lambda s: s.accounts.create_key(admin_email)).secret
    listed = httpx.get(
        server.base_url + "/api/admin/users",
        params={"q": person.email},
        headers={"authorization": f"Bearer {admin_key}"},
    ).json()["data"]
    user_id = listed[0]["id"]
    deleted = httpx.delete(
        server.base_url + f"/api/admin/users/{person.email}",
        headers={"authorization": f"Bearer {admin_key}"},
    )
    assert deleted.status_code == 204
    assert _deletions(server, user_id) == ["user"]
    gone = Browserless(server.base_url)
    assert gone.login(person).status_code == 401
    gone.close()


def test_removing_a_rating_or_changing_a_verdict_is_logged_by_id(server: LiveServer) -> None:
    """What an earlier export learnt from them no longer stands: incremental exports must
    withdraw it, so each is logged, once it took a label back (un-rating an answer no one
    rated, or saying a verdict again, takes nothing back)."""
    web = Browserless(server.base_url)
    web.login(new_person(server))
    first = web.chat(content="rate me, then take it back", model=SCRIPTED)
    conversation, question = first[0][1]["conversation_id"], first[0][1]["user_message"]["id"]
    answer = next(p for name, p in first if name == "done")["message"]["id"]
    assert web.api("PUT", f"/messages/{answer}/rating", json={"rating": 1}).is_success
    for _ in range(2):
        assert web.api("DELETE", f"/messages/{answer}/rating").status_code == 204
    assert _deletions(server, answer) == ["rating"]
    again = web.chat(conversation_id=conversation, parent_id=question, model=SCRIPTED)
    regenerated = next(p for name, p in again if name == "done")["message"]["id"]
    for verdict in ("better", "better", "worse", "same"):
        said = web.api("PUT", f"/messages/{regenerated}/verdict", json={"verdict": verdict})
        assert said.is_success, said.text
        comparison = said.json()["id"]
    assert _deletions(server, comparison) == ["verdict", "verdict"]
    web.close()


def test_the_api_takes_each_ratings_own_reasons(server: LiveServer) -> None:
    _, key = server.new_user(plan="roomy")
    completion = server.client(key).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "Rate me"}]
    )
    liked = _feedback(server, key, message_id=completion.id, rating=1, reasons=["helpful"])
    assert liked.status_code == 200, liked.text
    wrong = _feedback(server, key, message_id=completion.id, rating=1, reasons=["too_long"])
    assert wrong.status_code == 400
    assert "too_long is not a reason for a thumbs-up" in wrong.json()["error"]["message"]
    bare = _feedback(server, key, message_id=completion.id, verdict="better", reasons=["helpful"])
    assert bare.status_code == 400  # reasons belong to a rating
