"""What tracing costs a request: the same gateway with and without an OTLP endpoint.

Two Lamplighter apps in this process, each serving the scripted backend (no model, so the
gateway's own work is all there is to time), one exporting traces over OTLP/HTTP to a local
receiver that accepts and drops them. Rounds alternate between the two (off, on, off, on, ...),
each round timing ``--requests`` sequential non-streaming chat completions over loopback HTTP.
It prints the median requests/s of each side and their ratio (on / off).

    .venv/bin/python -m bench.tracing --rounds 7 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lamplighter.app import create_app
from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings, load_settings

MODEL = "scripted-echo"


class Served:
    """An ASGI app under uvicorn on its own thread."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True
        )
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Served:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def sink() -> Starlette:
    async def traces(request: Request) -> Response:
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def gateway(data_dir: Path, port: int, otlp: str) -> tuple[Any, str]:
    settings = load_settings(
        env={}, data_dir=data_dir, port=port, embedded_engine=False, otlp_endpoint=otlp
    )

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(MODEL)]

    # The bootstrap admin (its password is not needed) gets the benchmark's API key.
    app = create_app(settings, backends=backends, on_bootstrap=lambda *_: None)
    return app, settings.admin_email


async def unlimited_key(services: Any, email: str) -> str:
    """An API key on a plan whose limits never get in the benchmark's way."""
    limits = {"requests_per_minute": 10**7, "tokens_per_minute": 10**9, "tokens_per_day": 10**12}
    await services.plans.put("bench", {**limits, "concurrent_streams": 1000}, create=True)
    await services.accounts.set_plan(email, "bench")
    created = await services.accounts.create_key(email, "bench")
    return str(created.secret)


def run(served: Served, work: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(work, served.loop).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "measure me please"}]}
    with tempfile.TemporaryDirectory() as tmp, Served(sink(), 18991) as collector:
        off_app, admin = gateway(Path(tmp) / "off", 18992, "")
        on_app, _ = gateway(Path(tmp) / "on", 18993, collector.url)
        with Served(off_app, 18992) as off, Served(on_app, 18993) as on:
            keys = {}
            for name, served in (("off", off), ("on", on)):
                keys[name] = (
                    served.url,
                    run(served, unlimited_key(served.app.state.services, admin)),
                )
            rates: dict[str, list[float]] = {"off": [], "on": []}
            for round_ in range(args.rounds + 1):
                for name in ("off", "on"):
                    url, key = keys[name]
                    headers = {"authorization": f"Bearer {key}"}
                    with httpx.Client(base_url=url, headers=headers) as http:
                        started = time.perf_counter()
                        for _ in range(args.requests):
                            http.post("/v1/chat/completions", json=body).raise_for_status()
                        rate = args.requests / (time.perf_counter() - started)
                    if round_:  # the first round warms up
                        rates[name].append(rate)
            off_rate, on_rate = (statistics.median(rates[n]) for n in ("off", "on"))
            print(f"tracing off: {off_rate:.0f} req/s (rounds {[round(r) for r in rates['off']]})")
            print(f"tracing on:  {on_rate:.0f} req/s (rounds {[round(r) for r in rates['on']]})")
            print(f"on / off: {on_rate / off_rate:.3f}")


if __name__ == "__main__":
    main()
