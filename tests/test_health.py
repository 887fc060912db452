"""Health probes: alive, and ready only with every model loaded and the database reachable."""

from __future__ import annotations

from pathlib import Path

import httpx

from lamplighter import readonly
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import LiveServer, make_settings


def test_healthz_and_readyz_when_all_is_well(server: LiveServer) -> None:
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.base_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"models": True, "database": True}


def test_readyz_is_503_while_a_model_is_not_loaded(tmp_path: Path) -> None:
    loading = ScriptedBackend("loading")
    loading.ready = False

    async def backends(_: Settings) -> list[Backend]:
        return [loading]

    with LiveServer(make_settings(tmp_path), backends) as live:
        assert httpx.get(live.base_url + "/healthz").status_code == 200
        response = httpx.get(live.base_url + "/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {"models": False, "database": True}
        loading.ready = True
        assert httpx.get(live.base_url + "/readyz").status_code == 200


def test_readyz_is_503_when_the_database_is_gone(tmp_path: Path) -> None:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend()]

    with LiveServer(make_settings(tmp_path), backends) as live:
        live.call(lambda s: s.db.close())
        # Point the pool at a database that cannot be opened.
        (tmp_path / "lamplighter.db").unlink()
        (tmp_path / "lamplighter.db").mkdir()
        response = httpx.get(live.base_url + "/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"] is False


def test_readyz_is_503_for_good_once_db_copy_moved_the_store(tmp_path: Path) -> None:
    """A server left on the old database refuses every write: its readiness says so, so that a
    load balancer stops sending it requests. While the copy may still roll back, it stays
    ready (writes are refused only for a moment)."""
    settings = make_settings(tmp_path)

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend()]

    with LiveServer(settings, backends) as live:
        flag = readonly.freeze(tmp_path, settings.resolved_database_url, "lamplighter db copy")
        assert httpx.get(live.base_url + "/readyz").status_code == 200
        readonly.settle(tmp_path, flag, "postgresql://lamplighter:***@db.internal/lamplighter")
        response = httpx.get(live.base_url + "/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "moved"
        assert "restart this instance" in response.json()["reason"]
        assert "db.internal" not in response.text  # the probe is public: no database address
        assert httpx.get(live.base_url + "/healthz").status_code == 200  # alive: no restart loop
        readonly.thaw(tmp_path)  # rolled back
        assert httpx.get(live.base_url + "/readyz").status_code == 200
