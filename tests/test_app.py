"""The app as ``lamplighter serve`` assembles it: what one machine without Redis loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
