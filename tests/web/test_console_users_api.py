"""The admin API's users, as scripts and the console use them: restore without a body, the
abuse scores' temporary ban in the list, and paging through more users than one page holds."""

from __future__ import annotations

import httpx

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
