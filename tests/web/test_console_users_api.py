"""The admin API's users, as scripts and the console use them: restore without a body, the
abuse scores' temporary ban in the list, and paging through more users than one page holds."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from lamplighter.abuse.violations import Ban
from tests.conftest import LiveServer


def _admin(server: LiveServer) -> httpx.Client:
    _, key = server.new_user(admin=True)
    return httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"})


def test_restore_needs_no_body_as_the_docs_show(server: LiveServer) -> None:
    email, _ = server.new_user()
    with _admin(server) as admin:
        admin.post(f"/api/admin/users/{email}/suspend", json={"reason": "checking"})
        restored = admin.post(f"/api/admin/users/{email}/restore")  # curl -X POST, no body
        assert restored.status_code == 200, restored.text
        assert restored.json()["status"] == "active"
        refused = admin.post(f"/api/admin/users/{email}/restore", json={"reason": "x"})
        assert refused.status_code == 400


def temporarily_ban(server: LiveServer, admin: httpx.Client, email: str) -> None:
    """The ban the abuse scores impose after repeated violations (as one that another replica
    started arrives), on ``email``'s account for ten minutes."""
    user_id = admin.get(f"/api/admin/users/{email}").json()["user"]["id"]

    async def impose(services: Any) -> None:
        services.violations.impose(
            Ban(f"user:{user_id}", time.time() + 600, 600, 1, "rate_limited")
        )

    server.call(impose)


def test_the_users_list_shows_a_temporary_ban(server: LiveServer) -> None:
    email, _ = server.new_user()
    with _admin(server) as admin:
        temporarily_ban(server, admin, email)
        [row] = admin.get("/api/admin/users", params={"q": email}).json()["data"]
        assert row["status"] == "active"
        assert row["temporary_ban"]["reason"] == "rate_limited"
        admin.post(f"/api/admin/users/{email}/restore")
        [row] = admin.get("/api/admin/users", params={"q": email}).json()["data"]
        assert row["temporary_ban"] is None


def test_the_users_list_pages_through_every_match(server: LiveServer) -> None:
    plan = f"paged-{uuid.uuid4().hex[:6]}"
    with _admin(server) as admin:
        assert admin.put(f"/api/admin/plans/{plan}", json={}).status_code == 200
        emails = [server.new_user(plan=plan)[0] for _ in range(5)]
        seen: list[str] = []
        pages = []
        while True:
            params = {"q": plan, "limit": 2, "offset": len(seen)}
            page = admin.get("/api/admin/users", params=params).json()
            seen += [row["email"] for row in page["data"]]
            pages.append(page["has_more"])
            if not page["has_more"]:
                break
    assert seen == emails[::-1]  # newest first, each once
    assert pages == [True, True, False]
