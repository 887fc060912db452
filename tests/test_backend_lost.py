"""A request waiting for a slot on a backend that then hangs or breaks goes to another backend
that serves its model, instead of waiting out its plan's patience (five minutes on "roomy") in
front of one that will not serve it. Two upstreams (real HTTP servers on 127.0.0.1), one slot
each, behind a live gateway; x is weighted to be chosen first, and its health check is the
test's switch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from lamplighter.engines.base import Backend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, LiveServer, make_settings
from tests.test_router import ANSWER
from tests.test_streams import wait_until
from tests.upstream_server import Handler, serve_in_thread


class Backstage:
    def __init__(self) -> None:
        self.hold = {"x": threading.Event(), "y": threading.Event()}  # set: answer
        self.down: set[str] = set()  # health checks answer 503
        self.served: list[str] = []


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[LiveServer, Backstage]]:
    backstage = Backstage()

    def handler(name: str) -> Handler:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.path == "/health":
                return web.Response(status=503 if name in backstage.down else 200)
            if request.path != "/v1/chat/completions":
                return web.json_response({"object": "list", "data": []})
            backstage.served.append(name)
            hold = backstage.hold[name]
            while not hold.is_set():
                await asyncio.get_running_loop().run_in_executor(None, hold.wait, 0.2)
            return web.Response(body=ANSWER, content_type="text/event-stream")

        return handle

    with serve_in_thread(handler("x")) as x, serve_in_thread(handler("y")) as y:

        async def backends(_: Settings) -> list[Backend]:
            return [
                UpstreamBackend(
                    UpstreamConfig(
                        name,
                        server.url + "/v1",
                        ("m",),
                        capacity=1,
                        weight=weight,
                        health_url="/health",
                        health_interval_s=0.2,
                    )
                )
                for name, server, weight in (("x", x, 2.0), ("y", y, 1.0))
            ]

        (tmp_path / "c.toml").write_text(ROOMY_PLAN)
        with LiveServer(make_settings(tmp_path, config=tmp_path / "c.toml"), backends) as live:
            yield live, backstage
            for hold in backstage.hold.values():
                hold.set()
            live.close_clients()


def test_a_request_queued_for_a_backend_that_goes_down_is_answered_by_another(
    gateway: tuple[LiveServer, Backstage],
) -> None:
    live, backstage = gateway
    client = live.client(live.new_user(plan="roomy")[1]).with_options(timeout=30, max_retries=0)

    def ask(text: str) -> str | None:
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}]
        )
        return answer.choices[0].message.content

    async def queued_on_x(services: object) -> int:
        return services.chat.admission.pools["x"].queued  # type: ignore[attr-defined]

    with ThreadPoolExecutor(3) as pool:
        first, second = pool.submit(ask, "one"), pool.submit(ask, "two")
        wait_until(lambda: sorted(backstage.served) == ["x", "y"] or None)  # each holds one
        third = pool.submit(ask, "three")  # x is preferred (weight 2): it waits there
        wait_until(lambda: live.call(queued_on_x) == 1 or None)
        backstage.down.add("x")  # x hangs: its health check fails
        backstage.hold["y"].set()  # y answers, and has room again
        assert third.result(timeout=30) == "Hello"  # from y, long before its patience
        assert backstage.served.count("y") == 2 and backstage.served.count("x") == 1
        backstage.hold["x"].set()  # x comes back to life and finishes what it held
        assert first.result(timeout=30) == second.result(timeout=30) == "Hello"
