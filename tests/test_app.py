"""The app as ``lamplighter serve`` assembles it: what one machine without Redis loads."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from lamplighter.app import create_app, in_effect
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings, load_settings

ROOT = Path(__file__).parent.parent

# A fresh interpreter, as the command starts: the app built, started and stopped without
# LAMPLIGHTER_REDIS_URL, then the top-level packages it loaded.
START_WITHOUT_REDIS = """
import asyncio, sys
from pathlib import Path

from lamplighter.app import create_app
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import load_settings


async def backends(_):
    return [ScriptedBackend()]


async def main():
    settings = load_settings(env={}, data_dir=Path(sys.argv[1]), embedded_engine=False)
    app = create_app(settings, backends=backends, on_bootstrap=lambda *_: None)
    async with app.router.lifespan_context(app):
        pass


asyncio.run(main())
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_one_machine_without_redis_never_loads_the_redis_client(tmp_path: Path) -> None:
    """The Redis client (a tenth of a second to import, and its memory) is loaded only by a
    replica that shares its state through Redis."""
    started = subprocess.run(
        [sys.executable, "-c", START_WITHOUT_REDIS, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    loaded = started.stdout.split()
    assert "lamplighter" in loaded and "sqlalchemy" in loaded  # it did start
    assert "redis" not in loaded


def test_the_start_logs_the_settings_an_operator_confirms_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(), ScriptedBackend("other")]

    async def start_and_stop() -> None:
        settings = load_settings(env={}, data_dir=tmp_path, embedded_engine=False)
        app = create_app(settings, backends=backends, on_bootstrap=lambda *_: None)
        async with app.router.lifespan_context(app):
            pass

    with caplog.at_level(logging.INFO, logger="lamplighter.app"):
        asyncio.run(start_and_stop())
    [line] = [r for r in caplog.records if r.getMessage() == "settings in effect"]
    expected = {
        "database": f"sqlite+aiosqlite:///{tmp_path.resolve()}/lamplighter.db",
        "redis": "none",
        "config": "none",
        "data_dir": str(tmp_path.resolve()),
        "backends": 2,
    }
    assert {name: getattr(line, name, None) for name in expected} == expected


def test_the_settings_logged_at_start_never_show_a_password(tmp_path: Path) -> None:
    config = tmp_path / "lamplighter.toml"
    config.write_text("")
    settings = load_settings(
        env={
            "LAMPLIGHTER_DATABASE_URL": "postgresql://ll:s3cret@db.internal:5432/ll",
            # redis-py takes an unencoded @ in a password (it splits at the last one).
            "LAMPLIGHTER_REDIS_URL": "redis://:s3@cret@cache.internal:6379/0",
            "LAMPLIGHTER_CONFIG": str(config),
        },
        data_dir=tmp_path,
    )
    shown = in_effect(settings, 1)
    assert shown["database"] == "postgresql+asyncpg://ll:***@db.internal:5432/ll"
    assert shown["redis"] == "redis://:***@cache.internal:6379/0"
    assert shown["config"] == str(config.resolve())
    assert "cret" not in str(shown)
