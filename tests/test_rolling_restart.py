"""A rolling restart under load loses no request and no usage.

Three real ``lamplighter serve`` replicas share PostgreSQL and Redis and relay a simulated vLLM
server; a load balancer that routes only to replicas whose ``/readyz`` is 200 sits in front, and
``openai`` SDK clients (no retries) keep asking through it, streamed and not. Each replica in
turn gets SIGTERM, drains, exits and starts again. Every request must succeed, and the usage
ledger must hold exactly the tokens the clients were told they used.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from tests.fleet import (
    ROOMY,
    Gateway,
    Load,
    SimBackend,
    balancer,
    fresh_database,
    ledger_totals,
    needs_redis,
    new_users,
    store_plans,
    wait_for,
)

pytestmark = needs_redis


def test_a_rolling_restart_under_load_loses_no_request_and_no_usage(tmp_path: Path) -> None:
    with fresh_database() as url:
        store_plans(url, ROOMY)
        users = new_users(url, "roomy", "roomy", "roomy", admin=True)
        sim = SimBackend("sim", tmp_path, time_scale=4)
        sim.start()
        config = tmp_path / "lamplighter.toml"
        config.write_text(ROOMY + sim.table(f"sim-{tmp_path.name[-12:]}"))
        settings = {"drain_grace": 2, "shutdown_timeout": 20}
        replicas = [
            Gateway(f"replica-{i}", tmp_path, database_url=url, config=config, **settings)
            for i in range(3)
        ]
        try:
            sim.wait_up()
            for replica in replicas:
                replica.start()
            for replica in replicas:
                replica.wait_ready()
            with balancer([r.url for r in replicas]) as (front, base_url):
                wait_for(lambda: len(front.ready) == 3, 10, "the balancer sees every replica")
                load = Load(base_url, [user.key for user in users[:-1]], workers=6)
                load.start()
                try:
                    load.wait_for_requests(20)
                    drains = []
                    for replica in replicas:
                        served_before = front.sent[replica.url]
                        # An answer longer than the grace, running when SIGTERM comes: it
                        # must end as if nothing happened.
                        started = threading.Event()
                        running = threading.Thread(
                            target=load.stream_once, args=(replica.url, 120, started)
                        )
                        running.start()
                        assert started.wait(30)
                        stopped = time.monotonic()
                        status = replica.stop()
                        drains.append(time.monotonic() - stopped)
                        running.join(timeout=30)
                        assert status in (0, -signal.SIGTERM), replica.log.read_text()[-3000:]
                        assert replica.url not in front.ready
                        replica.start()
                        replica.wait_ready()
                        wait_for(lambda r=replica: r.url in front.ready, 10, "the balancer sees it")
                        load.wait_for_requests(10)
                        assert front.sent[replica.url] > served_before
                finally:
                    load.stop()
            for replica in replicas:
                replica.stop()
        finally:
            for replica in replicas:
                replica.kill()
            sim.kill()
        assert not load.failures, load.failures[:5]
        rows, prompt, completion, finishes = ledger_totals(url, [user.id for user in users[:-1]])
        waited = [  # in flight when each restart's grace ended
            next(e["in_flight"] for e in replica.logs() if e.get("phase") == "refusing")
            for replica in replicas
        ]
        print(
            f"\nrolling restart: {load.ok} requests ({load.streamed} streamed), 0 failed, "
            f"{front.refused} connections refused; SIGTERM to exit "
            + ", ".join(f"{d:.2f} s" for d in drains)
            + f"; still running when the grace ended: {waited}"
        )
        assert all(waited), "each replica had a stream to wait for after its grace"
        assert rows == load.ok
        assert (prompt, completion) == (load.prompt_tokens, load.completion_tokens)
        assert set(finishes) <= {"stop", "length"}, finishes
