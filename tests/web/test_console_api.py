"""The admin API behind the operator console: who may use it, the live figures, users
(suspend, ban, restore, keys), usage reports and feedback figures."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from lamplighter.flywheel.export import Exporter
from tests.conftest import SCRIPTED, LiveServer
from tests.web.conftest import Browserless, new_person

ADMIN_GETS = [
    "/api/admin/stats",
    "/api/admin/audit",
    "/api/admin/plans",
    "/api/admin/users",
    "/api/admin/users/someone@example.org",
    "/api/admin/usage",
    "/api/admin/flywheel",
]
ADMIN_CHANGES = [
    ("PUT", "/api/admin/plans/free", {"priority": 0}),
    ("PUT", "/api/admin/users/someone@example.org/plan", {"plan": "free"}),
    ("POST", "/api/admin/users/someone@example.org/suspend", {"reason": "x"}),
    ("POST", "/api/admin/users/someone@example.org/ban", {"reason": "x"}),
    ("POST", "/api/admin/users/someone@example.org/restore", {}),
    ("DELETE", f"/api/admin/keys/{uuid.uuid4()}", None),
]
CONSOLE_PAGES = [
    "/admin",
    "/admin/plans",
    "/admin/users",
    "/admin/usage",
    "/admin/review",
    "/admin/flywheel",
]


def test_non_admins_get_404_on_every_admin_page_and_api(
    server: LiveServer, web: Browserless, user: tuple[str, str]
) -> None:
    _, key = user
    anonymous = httpx.Client(base_url=server.base_url)
    with_key = httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"})
    for client in (web.http, with_key, anonymous):
        for path in ADMIN_GETS + CONSOLE_PAGES:
            assert client.get(path).status_code == 404, path
        for method, path, body in ADMIN_CHANGES:
            headers = {"x-csrf-token": web.csrf}
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path)
    anonymous.close()
    with_key.close()


def test_an_admin_session_reaches_the_console_and_changes_need_the_csrf_token(
    operator: Browserless,
) -> None:
    for path in CONSOLE_PAGES:
        page = operator.http.get(path)
        assert page.status_code == 200 and 'src="/static/admin.js"' in page.text, path
    assert operator.http.get("/admin/nonsense").status_code == 404
    forged = operator.http.put("/api/admin/plans/free", json={"priority": 5})
    assert forged.status_code == 403
    assert operator.api("GET", "/admin/plans").status_code == 200


def test_live_figures_move_with_traffic(server: LiveServer, operator: Browserless) -> None:
    client = server.client(server.new_user(plan="roomy")[1])
    started = time.time()
    for _ in range(3):
        client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "count me"}]
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = operator.api("GET", "/admin/stats", params={"since": started}).json()
        busy = [p for p in stats["points"] if p["requests_per_s"] > 0]
        if sum(p["requests_per_s"] * stats["interval_s"] for p in busy) >= 3:
            break
    else:
        pytest.fail(f"no point counted the 3 requests: {stats['points']}")
    point = busy[-1]
    assert point["t"] > started and point["tokens_per_s"] > 0
    assert "roomy" in point["ttft_p50"] and point["ttft_p99"]["roomy"] >= point["ttft_p50"]["roomy"]
    assert point["error_rate"] == 0
    names = {b["name"] for b in stats["backends"]}
    assert {f"scripted:{SCRIPTED}"} <= names
    assert all(b["ready"] for b in stats["backends"])
    assert stats["totals"]["requests"] >= 3
    # Asking for points after the newest returns nothing new (the page polls this way).
    assert (
        operator.api("GET", "/admin/stats", params={"since": stats["now"] + 60}).json()["points"]
        == []
    )


def test_suspend_ban_and_restore(server: LiveServer, operator: Browserless) -> None:
    victim = new_person(server)
    key = server.call(lambda s: s.accounts.create_key(victim.email, "k")).secret
    browser = Browserless(server.base_url)
    browser.login(victim)
    client = server.client(key)

    suspended = operator.api(
        "POST", f"/admin/users/{victim.email}/suspend", json={"reason": "scraping", "days": 2}
    ).json()
    assert suspended["status"] == "suspended" and suspended["disabled_reason"] == "scraping"
    assert suspended["disabled_until"] is not None
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert browser.api("GET", "/me").status_code == 401  # the session ended
    assert browser.login(victim).status_code == 401

    restored = operator.api("POST", f"/admin/users/{victim.email}/restore", json={}).json()
    assert restored["status"] == "active"
    assert client.models.list().data
    banned = operator.api("POST", f"/admin/users/{victim.email}/ban", json={"reason": "abuse"})
    assert banned.json()["status"] == "banned"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    listed = operator.api("GET", "/admin/users", params={"q": victim.email}).json()["data"]
    assert [(u["email"], u["status"]) for u in listed] == [(victim.email, "banned")]
    browser.close()


def test_an_admin_cannot_ban_themselves(operator: Browserless) -> None:
    me = operator.api("GET", "/me").json()["email"]
    response = operator.api("POST", f"/admin/users/{me}/ban", json={"reason": "oops"})
    assert response.status_code == 403


def test_user_detail_shows_usage_and_keys_and_a_key_can_be_revoked(
    server: LiveServer, operator: Browserless
) -> None:
    email, key = server.new_user(plan="roomy")
    client = server.client(key)
    for _ in range(2):
        client.chat.completions.create(
            model=SCRIPTED, messages=[{"role": "user", "content": "five words of prompt here"}]
        )
    detail = operator.api("GET", f"/admin/users/{email}").json()
    assert detail["user"]["requests_24h"] == 2 and detail["user"]["tokens_24h"] > 0
    today = detail["usage"]["days"][-1]
    assert len(detail["usage"]["days"]) == 14 and today["requests"] == 2
    assert today["prompt_tokens"] + today["completion_tokens"] == detail["usage"]["total_tokens"]
    [live] = detail["keys"]
    assert live["revoked_at"] is None and live["last_used_at"] is not None
    assert operator.api("DELETE", f"/admin/keys/{live['id']}").status_code == 204
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert operator.api("GET", f"/admin/users/{email}").json()["keys"][0]["revoked_at"]


def test_usage_report_ranks_users_by_tokens(server: LiveServer, operator: Browserless) -> None:
    plan = f"metered-{uuid.uuid4().hex[:6]}"
    assert operator.api("PUT", f"/admin/plans/{plan}", json={"priority": 1}).status_code == 200
    heavy_email, heavy = server.new_user(plan=plan)
    light_email, light = server.new_user(plan=plan)
    server.client(heavy).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "word " * 300}]
    )
    server.client(light).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "hi"}]
    )
    report = operator.api("GET", "/admin/usage", params={"hours": 1, "plan": plan}).json()
    assert [row["email"] for row in report["top_users"]] == [heavy_email, light_email]
    heavy_row = report["top_users"][0]
    assert heavy_row["total_tokens"] == heavy_row["prompt_tokens"] + heavy_row["completion_tokens"]
    assert heavy_row["prompt_tokens"] >= 300
    [metered] = [row for row in report["by_plan"] if row["plan"] == plan]
    assert metered["users"] == 2 and metered["requests"] == 2


def test_feedback_figures_count_ratings(
    server: LiveServer, operator: Browserless, web: Browserless, tmp_path: Path
) -> None:
    before = operator.api("GET", "/admin/flywheel").json()
    answer = web.chat(content="rate this")[-1][1]["message"]["id"]
    web.api("PUT", f"/messages/{answer}/rating", json={"rating": -1, "reasons": ["unsafe"]})
    after = operator.api("GET", "/admin/flywheel").json()
    assert after["feedback"]["thumbs_down"] == before["feedback"]["thumbs_down"] + 1
    unsafe = after["feedback"]["by_reason"].get("unsafe", 0)
    assert unsafe == before["feedback"]["by_reason"].get("unsafe", 0) + 1
    assert after["feedback"]["last_7_days"][-1]["thumbs_down"] >= 1
    assert 0 <= after["consent_rate"] <= 1
    report = server.call(lambda s: Exporter(s.db, consent_default=True).run("kto", tmp_path))
    [latest, *_] = operator.api("GET", "/admin/flywheel").json()["exports"]
    assert latest["kind"] == "kto" and latest["format"] == "jsonl"
    assert latest["rows"] == report.rows and latest["sha256"] == report.sha256
    assert latest["out"] == str(tmp_path)
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'lamplighter_feedback_total{kind="thumbs_down"}' in metrics


def _sample(metrics: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text; 0 when the series does not exist yet."""
    for line in metrics.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_queue_wait_admissions_and_backend_health_are_exported(
    server: LiveServer, user: tuple[str, str]
) -> None:
    def scrape() -> str:
        return httpx.get(server.base_url + "/metrics").text

    backend = f"scripted:{SCRIPTED}"
    waits = {"plan": "roomy", "backend": backend}
    before = scrape()
    server.client(user[1]).chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "hi"}]
    )
    after = scrape()
    count = "lamplighter_queue_wait_seconds_count"
    assert _sample(after, count, **waits) == _sample(before, count, **waits) + 1
    admitted = "lamplighter_admitted_total"
    assert _sample(after, admitted, plan="roomy") == _sample(before, admitted, plan="roomy") + 1
    assert _sample(after, "lamplighter_backend_up", backend=backend) == 1.0


def test_admin_actions_land_in_the_append_only_audit_log(
    server: LiveServer, operator: Browserless
) -> None:
    me = operator.api("GET", "/me").json()["email"]
    target = new_person(server)
    key = server.call(lambda s: s.accounts.create_key(target.email, "k"))
    plan = f"audited-{uuid.uuid4().hex[:6]}"
    operator.api("PUT", f"/admin/plans/{plan}", json={"max_tokens": 64})
    operator.api("PUT", f"/admin/users/{target.email}/plan", json={"plan": plan})
    operator.api("POST", f"/admin/users/{target.email}/suspend", json={"reason": "spam"})
    operator.api("POST", f"/admin/users/{target.email}/restore", json={})
    operator.api("DELETE", f"/admin/keys/{key.id}")
    # A refused action writes nothing.
    assert operator.api("POST", f"/admin/users/{me}/ban", json={"reason": "x"}).status_code == 403

    entries = operator.api("GET", "/admin/audit", params={"limit": 5}).json()["data"]
    assert [(e["action"], e["target"]) for e in reversed(entries)] == [
        ("plan.create", plan),
        ("user.plan", target.email),
        ("user.suspend", target.email),
        ("user.restore", target.email),
        ("key.revoke", str(key.id)),
    ]
    assert all(e["actor"] == me for e in entries)
    assert entries[2]["details"] == {"reason": "spam", "days": None}
    older = operator.api("GET", "/admin/audit", params={"before": entries[-1]["id"]}).json()
    assert all(e["id"] < entries[-1]["id"] for e in older["data"])

    async def tamper(services: Any) -> str:
        from sqlalchemy import text

        for sql in ("UPDATE audit_log SET action = 'nothing'", "DELETE FROM audit_log"):
            try:
                async with services.db.transaction() as session:
                    await session.execute(text(sql))
            except Exception as error:  # the database itself refuses
                assert "append-only" in str(error)
            else:
                return sql
        return ""

    assert server.call(tamper) == ""
    assert len(operator.api("GET", "/admin/audit", params={"limit": 5}).json()["data"]) == 5
