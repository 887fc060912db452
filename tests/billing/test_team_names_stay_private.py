"""Nobody learns which team names exist from the billing API: another owner's team answers
exactly as a name that is no team (they are often customers' or departments' names)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import LiveServer

ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/billing/cancel", {}),
    ("/api/billing/resume", {}),
    ("/api/billing/plan", {"plan": "silver"}),
    ("/api/billing/checkout", {"plan": "silver", "period": "month"}),
]


def _answer(live: LiveServer, key: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = httpx.post(
        live.base_url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    return response.status_code, response.json()


def test_another_owners_team_answers_as_a_team_that_does_not_exist(live: LiveServer) -> None:
    _, admin = live.new_user(admin=True)
    owner, _ = live.new_user()
    _, outsider = live.new_user()
    taken = f"acme-{uuid.uuid4().hex[:8]}"
    made = httpx.post(
        f"{live.base_url}/api/admin/teams",
        json={"name": taken, "owner": owner},
        headers={"authorization": f"Bearer {admin}"},
    )
    assert made.status_code == 200, made.text
    free = f"acme-{uuid.uuid4().hex[:8]}"
    for path, body in ROUTES:
        theirs = _answer(live, outsider, path, {**body, "team": taken})
        nobodys = _answer(live, outsider, path, {**body, "team": free})
        assert theirs[0] == nobodys[0] == 404, (path, theirs, nobodys)
        assert theirs[1]["error"]["code"] == "team_not_found"
        # The same words, but for the name asked about.
        assert theirs[1] == _with(nobodys[1], free, taken), path


def _with(answer: Any, old: str, new: str) -> Any:
    """``answer`` with the string ``old`` replaced by ``new`` wherever it appears."""
    if isinstance(answer, dict):
        return {k: _with(v, old, new) for k, v in answer.items()}
    if isinstance(answer, str):
        return answer.replace(old, new)
    return answer
