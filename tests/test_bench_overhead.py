"""`lamplighter bench overhead`, run small: the mock upstream alone, the real gateway in front of
it, the gateway again with its traffic state in this machine's Redis and with its store in this
machine's PostgreSQL, and the floor bare and durable (LiteLLM left out), one short cell each,
checked for shape and for sane figures."""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lamplighter.cli import app
from lamplighter.overhead.run import Options, bench, parse_concurrency, render
from lamplighter.overhead.targets import MODEL, start_floor, start_mock
from tests.conftest import new_postgres_database
from tests.fleet import redis_answers

REDIS = "redis://127.0.0.1:6379/15"  # a database of its own: the benchmark's keys stay there

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads CPU time from /proc"
)


@pytest.fixture(scope="module")
def result() -> Iterator[dict]:
    if not redis_answers(REDIS):
        pytest.skip("no Redis on 127.0.0.1:6379")
    with new_postgres_database() as postgres:  # empty: the gateway migrates it
        options = Options(
            concurrency=(2,),
            duration=0.7,
            warmup=0.2,
            chunks=8,
            long_chunks=24,
            skip_litellm=True,
            redis=REDIS,
            postgres=postgres,
            floor=True,
        )
        yield bench(options)


def test_every_cell_is_measured(result: dict) -> None:
    cells = {(c["target"], c["stream"], c["concurrency"], c["tokens"]): c for c in result["cells"]}
    kinds = [(False, 8), (True, 8), (True, 24)]
    targets = ("mock", "gateway", "gw-redis", "gw-pg", "floor", "floor-db")
    assert set(cells) == {(t, s, 2, n) for t in targets for s, n in kinds}
    for cell in cells.values():
        assert cell["errors"] == 0, cell["sample_error"]
        assert cell["requests"] > 0 and cell["requests_per_s"] > 0
        assert cell["latency_ms"]["p50"] > 0
        assert cell["latency_ms"]["p99"] >= cell["latency_ms"]["p50"]
        assert cell["cpu_ms_per_request"] is not None and cell["cpu_ms_per_request"] >= 0
        assert cell["server_cores"] > 0 and cell["other_cores"] >= 0
    # Streams arrive as chunks, every one counted; the gateway relays them all.
    for target in targets:
        for tokens in (8, 24):
            streamed = cells[(target, True, 2, tokens)]
            assert streamed["chunks_per_request"] == tokens
            assert streamed["first_chunk_ms"]["p50"] <= streamed["latency_ms"]["p50"]
    # The mock alone is much faster than anything put in front of it.
    mock, gateway = cells[("mock", False, 2, 8)], cells[("gateway", False, 2, 8)]
    assert mock["requests_per_s"] > gateway["requests_per_s"]


def test_the_comparisons_name_the_gateway(result: dict) -> None:
    rows = result["compared"]["rows"]
    assert {(r["stream"], r["concurrency"]) for r in rows} == {(False, 2), (True, 2)}
    for row in rows:
        assert row["gateway"]["added_p50_ms"] is not None
        assert row["gw-redis"]["added_p50_ms"] is not None
        assert row["redis_cpu_over_gateway"] > 0 and row["redis_rps_over_gateway"] > 0
        assert row["gw-pg"]["added_p50_ms"] is not None
        assert row["pg_cpu_over_gateway"] > 0 and row["pg_rps_over_gateway"] > 0
        assert row["floor"]["added_p50_ms"] is not None
        assert row["floor-db"]["added_p50_ms"] is not None
        assert "litellm" not in row
    assert result["compared"]["cpu_ms_per_chunk"]["gateway"]["2"] is not None
    assert result["unavailable"] == {"litellm": "skipped (--skip-litellm)"}
    names = [check["check"] for check in result["checks"]]
    assert any("added p50 latency" in name for name in names)
    assert any("CPU per relayed chunk" in name for name in names)
    json.dumps(result)  # --json prints it as one object


def test_the_report_is_a_table(result: dict) -> None:
    text = render(result)
    assert "gateway" in text and "mock" in text and "gw-redis" in text
    assert "with Redis, requests/s over without" in text
    assert "on PostgreSQL, requests/s over on SQLite" in text and "gw-pg" in text
    assert "litellm not measured: skipped" in text
    assert "added p50 ms: the floor" in text and "with a durable commit" in text


def test_concurrency_is_a_list_of_counts() -> None:
    assert parse_concurrency("1, 8,64") == (1, 8, 64)
    for bad in ("", "0", "a,b"):
        with pytest.raises(ValueError):
            parse_concurrency(bad)


def test_the_command_refuses_bad_options() -> None:
    answer = CliRunner().invoke(app, ["bench", "overhead", "--concurrency", "x"])
    assert answer.exit_code == 2
    answer = CliRunner().invoke(app, ["bench", "overhead", "--chunks", "64", "--long-chunks", "8"])
    assert answer.exit_code == 2


def test_a_redis_and_a_postgresql_the_gateway_cannot_reach_are_named_not_measured() -> None:
    options = Options(
        concurrency=(1,), duration=0.3, warmup=0.1, chunks=4, long_chunks=8, skip_litellm=True,
        redis="redis://127.0.0.1:1/0",
        postgres="postgresql+asyncpg://nobody@127.0.0.1:1/nothing",
    )  # fmt: skip
    result = bench(options)
    assert "does not reach Redis" in result["unavailable"]["gw-redis"]
    assert "gw-pg" in result["unavailable"]
    assert {cell["target"] for cell in result["cells"]} == {"mock", "gateway"}


def _ask(url: str, stream: bool) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "lamps?"}], "stream": stream}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"authorization": "Bearer x", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        data: bytes = answer.read()
        return data


def test_the_durable_floor_keeps_every_answer_it_gives(tmp_path: Path) -> None:
    """The yardstick does the work it stands for: each answer, whole or streamed, is in its
    database by the time the client has it, word for word."""
    mock = start_mock(tmp_path, 5)
    floor = start_floor(tmp_path, mock, durable=True)
    try:
        whole = json.loads(_ask(floor.url, stream=False))
        streamed = _ask(floor.url, stream=True).decode()
        assert streamed.endswith("data: [DONE]\n\n")
        lines = streamed.split("\n")
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        pieces = [c["delta"].get("content") or "" for e in events for c in e["choices"]]
        with sqlite3.connect(next(tmp_path.glob("floor-db-*.db"))) as db:
            kept = db.execute("SELECT question, answer FROM exchanges ORDER BY id").fetchall()
            tokens = db.execute("SELECT tokens FROM exchanges ORDER BY id").fetchall()
    finally:
        floor.stop()
        mock.stop()
    assert kept == [
        ("lamps?", whole["choices"][0]["message"]["content"]),
        ("lamps?", "".join(pieces)),
    ]
    assert len(kept[0][1].split()) == 5
    assert tokens == [(5,), (5,)]  # as the upstream counted them, streamed or not
