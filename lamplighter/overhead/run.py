"""The overhead benchmark: the same load against the mock upstream alone, against
``lamplighter serve`` in front of it, and against the LiteLLM proxy in front of it.

Every cell (target x streaming or not x concurrency) is one run of the load generator in its
own process: ``warmup`` seconds unrecorded, then ``duration`` seconds measured. The target's
CPU time is read from ``/proc`` as the measured window opens and closes, so CPU per request is
the server's own (its upstream and the client are other processes). Targets take turns cell by
cell, so a drift of the machine's speed lands on all of them alike.

Figures per cell: requests/s, latency p50/p90/p99 (request written to last byte; for streams
also to the first content event), CPU milliseconds per request and cores used. Compared per
mode and concurrency: latency *added* over the mock alone (the same percentile of each), the
gateway's requests/s over LiteLLM's, and CPU per relayed chunk. That last one comes from a second
streamed cell with ``long_chunks`` tokens an answer: the extra CPU a request costs divided by the
extra chunks it carries, so it holds everything a chunk costs (reading it from the upstream,
parsing it, framing it for the client) and nothing a request costs once.

The soak (``--soak SECONDS``) instead holds ``--soak-streams`` streams open against a fresh
gateway for that long, with a pause before each chunk (``--soak-chunk-ms``) so the streams live
as long as real ones, and samples the gateway's resident memory every few seconds; growth from
the end of the warm-up to the end must stay under 5%.

With ``--redis URL`` a second gateway (``gw-redis``) keeps its traffic state in that Redis, as
replicas do (rate limits, stream leases, shared backend slots, the cache), and takes its turn in
every cell: what sharing the state costs a request, as ratios to the gateway without it. With
``--postgres URL`` another (``gw-pg``) keeps its store in that PostgreSQL database instead of
SQLite, as replicas do: what the shared database costs a request, likewise. With ``--floor``
two more take their turns: ``floor``, the least a proxy on the gateway's own stack does
(``floor.py``), and ``floor-db``, the same with one durable SQLite commit a request. What they
add over the mock is the stack's share of the gateway's added latency; the rest is the gateway's.

    lamplighter bench overhead                       # 1, 8, 64; 5 s a cell; about 3 minutes
    lamplighter bench overhead --json --skip-litellm --duration 2
    lamplighter bench overhead --skip-litellm --redis redis://127.0.0.1:6379/15
    lamplighter bench overhead --skip-litellm --postgres postgresql://127.0.0.1/bench
    lamplighter bench overhead --skip-litellm --floor --concurrency 1
    lamplighter bench overhead --soak 600 --soak-streams 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lamplighter.overhead.targets import (
    MODEL,
    NotAvailable,
    Target,
    cpu_seconds,
    machine_busy_seconds,
    start_floor,
    start_gateway,
    start_litellm,
    start_mock,
)

# The targets, on one process.
ADDED_P50_MS = 1.0  # at concurrency 1
TIMES_LITELLM = 20.0  # requests/s
CHUNK_CPU_MS = 0.1
SOAK_GROWTH = 0.05
PAUSE_SECONDS = 0.5  # between cells, so one cell's stragglers are gone before the next
# Cores the rest of the machine used during a cell above which its figures are marked noisy.
NOISY_CORES = 0.25
# The gateways whose state is shared as replicas share it, and their ratios' prefix.
SHARED = {"gw-redis": "redis", "gw-pg": "pg"}
# The least a proxy on the gateway's stack adds, without and with a durable commit.
FLOORS = ("floor", "floor-db")


@dataclass(frozen=True)
class Options:
    concurrency: tuple[int, ...] = (1, 8, 64)
    duration: float = 5.0
    warmup: float = 1.0
    chunks: int = 32
    long_chunks: int = 128  # the second streamed cell, for the CPU a chunk costs
    skip_litellm: bool = False
    # A Redis URL: also measure a gateway keeping its traffic state there ("gw-redis").
    redis: str | None = None
    # A PostgreSQL URL: also measure a gateway keeping its store there ("gw-pg").
    postgres: str | None = None
    # Also the floor, bare and with a durable commit ("floor", "floor-db"): the stack's share.
    floor: bool = False
    soak: float = 0.0  # seconds; 0: no soak, run the matrix
    soak_streams: int = 500
    soak_interval: float = 5.0
    soak_warmup: float | None = None  # None: a fifth of the soak, at most 60 s
    soak_chunk_ms: float = 20.0


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def drive(
    target: Target,
    spec: dict[str, Any],
    tick: Callable[[], None] | None = None,
    interval: float = 5.0,
    beside: tuple[Target, ...] = (),
) -> dict[str, Any]:
    """One run of the load generator against ``target``; ``tick`` is called every
    ``interval`` seconds while it runs. ``other_cores`` in the result is what the rest of the
    machine used meanwhile: everything but the target, the servers ``beside`` it (its
    upstream) and the load generator."""
    spec = {"port": target.port, "api_key": target.api_key, "model": MODEL, **spec}
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            [sys.executable, "-m", "lamplighter.overhead.load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as load,
    ):
        assert load.stdin is not None and load.stdout is not None
        load.stdin.write(json.dumps(spec) + "\n")
        load.stdin.close()
        lines: queue.Queue[str] = queue.Queue()
        out = load.stdout

        def read() -> None:
            with contextlib.suppress(ValueError, OSError):  # closed under it: we are leaving
                for line in out:
                    lines.put(line.strip())
            lines.put("")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        marks: dict[str, tuple[float, float, float, float]] = {}

        def mark() -> tuple[float, float, float, float]:
            ours = {*target.pids(), load.pid, os.getpid()}
            ours.update(pid for server in beside for pid in server.pids())
            return time.monotonic(), target.cpu(), machine_busy_seconds(), cpu_seconds([*ours])

        result: dict[str, Any] | None = None
        try:
            while result is None:
                try:
                    line = lines.get(timeout=interval)
                except queue.Empty:
                    if tick is not None:
                        tick()
                    continue
                if line in ("measuring", "stopped"):
                    marks[line] = mark()
                    if tick is not None:
                        tick()
                elif line:
                    result = json.loads(line)
                else:
                    load.wait(timeout=30)
                    errors.seek(0)
                    error = errors.read().decode("utf-8", "replace")[-1500:]
                    raise RuntimeError(f"the load generator failed ({load.returncode}):\n{error}")
            load.wait(timeout=60)
        except BaseException:
            load.kill()  # interrupted: the load stops with the benchmark
            raise
        reader.join(timeout=10)
    (opened, cpu_opened, busy_opened, ours_opened) = marks["measuring"]
    (closed, cpu_closed, busy_closed, ours_closed) = marks["stopped"]
    cpu, wall = cpu_closed - cpu_opened, closed - opened
    others = (busy_closed - busy_opened) - (ours_closed - ours_opened)
    done = result["requests"]
    result["server_cores"] = round(cpu / wall, 3)
    result["other_cores"] = round(max(0.0, others) / wall, 3)
    result["cpu_ms_per_request"] = round(cpu * 1000 / done, 4) if done else None
    return result


def cell(
    target: Target,
    options: Options,
    stream: bool,
    concurrency: int,
    chunks: int,
    upstream: Target,
) -> dict[str, Any]:
    spec = {
        "concurrency": concurrency,
        "warmup": options.warmup,
        "duration": options.duration,
        "stream": stream,
        "chunks": chunks,
    }
    figures = drive(target, spec, beside=(upstream,) if upstream is not target else ())
    time.sleep(PAUSE_SECONDS)
    head = {"target": target.name, "stream": stream, "concurrency": concurrency, "tokens": chunks}
    return {**head, **figures}


Index = dict[tuple[str, bool, int], dict[str, Any]]


def index(cells: list[dict[str, Any]], tokens: int) -> Index:
    """The cells of answers ``tokens`` long, by (target, stream, concurrency)."""
    return {(c["target"], c["stream"], c["concurrency"]): c for c in cells if c["tokens"] == tokens}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _over(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def compare(cells: list[dict[str, Any]], options: Options) -> dict[str, Any]:
    """Added latency over the mock, requests/s over LiteLLM's, and CPU per relayed chunk."""
    at = index(cells, options.chunks)
    longer = index(cells, options.long_chunks)
    rows = []
    for stream in (False, True):
        for n in options.concurrency:
            mock = at.get(("mock", stream, n))
            row: dict[str, Any] = {"stream": stream, "concurrency": n}
            for name in ("gateway", *SHARED, *FLOORS, "litellm"):
                mine = at.get((name, stream, n))
                if mine is None or mock is None:
                    continue
                row[name] = {
                    "added_p50_ms": _minus(mine["latency_ms"]["p50"], mock["latency_ms"]["p50"]),
                    "added_p99_ms": _minus(mine["latency_ms"]["p99"], mock["latency_ms"]["p99"]),
                    "added_first_chunk_p50_ms": _minus(
                        mine["first_chunk_ms"]["p50"], mock["first_chunk_ms"]["p50"]
                    ),
                    "share_of_mock_rps": _over(mine["requests_per_s"], mock["requests_per_s"]),
                }
            gateway, litellm = at.get(("gateway", stream, n)), at.get(("litellm", stream, n))
            for name, prefix in SHARED.items():
                shared = at.get((name, stream, n))
                if gateway is not None and shared is not None:
                    row[f"{prefix}_cpu_over_gateway"] = _over(
                        shared["cpu_ms_per_request"], gateway["cpu_ms_per_request"]
                    )
                    row[f"{prefix}_rps_over_gateway"] = _over(
                        shared["requests_per_s"], gateway["requests_per_s"]
                    )
            if gateway is not None and litellm is not None:
                row["gateway_over_litellm_rps"] = _over(
                    gateway["requests_per_s"], litellm["requests_per_s"]
                )
                row["litellm_cpu_over_gateway"] = _over(
                    litellm["cpu_ms_per_request"], gateway["cpu_ms_per_request"]
                )
            rows.append(row)
    per_chunk: dict[str, dict[str, float | None]] = {}
    for name in ("mock", "gateway", *SHARED, *FLOORS, "litellm"):
        for n in options.concurrency:
            short, long = at.get((name, True, n)), longer.get((name, True, n))
            if short is None or long is None:
                continue
            a, b = long["cpu_ms_per_request"], short["cpu_ms_per_request"]
            extra = (long["chunks_per_request"] or 0) - (short["chunks_per_request"] or 0)
            value = None if a is None or b is None or extra <= 0 else round((a - b) / extra, 4)
            per_chunk.setdefault(name, {})[str(n)] = value
    return {"rows": rows, "cpu_ms_per_chunk": per_chunk}


def checks(cells: list[dict[str, Any]], compared: dict[str, Any], options: Options) -> list[Any]:
    at = index(cells, options.chunks)
    found: list[dict[str, Any]] = []
    first = min(options.concurrency)
    for row in compared["rows"]:
        if row["concurrency"] != first or "gateway" not in row:
            continue
        key = "added_first_chunk_p50_ms" if row["stream"] else "added_p50_ms"
        value = row["gateway"][key]
        what = "to the first chunk, streamed" if row["stream"] else "whole answers"
        found.append(
            {
                "check": f"added p50 latency at concurrency {first}, {what}",
                "value_ms": value,
                "target": f"< {ADDED_P50_MS:g} ms",
                "ok": value is not None and value < ADDED_P50_MS,
            }
        )
    for stream in (False, True):
        peaks = {}
        for name in ("gateway", "litellm"):
            rates = [at[(name, stream, n)]["requests_per_s"] for n in options.concurrency
                     if (name, stream, n) in at]  # fmt: skip
            if rates:
                peaks[name] = max(rates)
        if len(peaks) == 2:
            ratio = _over(peaks["gateway"], peaks["litellm"])
            found.append(
                {
                    "check": f"peak requests/s over LiteLLM's, {'streamed' if stream else 'whole'}",
                    "value": ratio,
                    "gateway": peaks["gateway"],
                    "litellm": peaks["litellm"],
                    "target": f">= {TIMES_LITELLM:g}x",
                    "ok": ratio is not None and ratio >= TIMES_LITELLM,
                }
            )
    top = str(max(options.concurrency))
    chunk = compared["cpu_ms_per_chunk"].get("gateway", {}).get(top)
    if "gateway" in compared["cpu_ms_per_chunk"]:
        found.append(
            {
                "check": f"CPU per relayed chunk at concurrency {top}",
                "value_ms": chunk,
                "target": f"< {CHUNK_CPU_MS:g} ms",
                "ok": chunk is not None and chunk < CHUNK_CPU_MS,
            }
        )
    return found


def matrix(options: Options, workdir: Path, say: Say) -> dict[str, Any]:
    targets: list[Target] = []
    unavailable: dict[str, str] = {}
    try:
        say("starting the mock upstream")
        mock = start_mock(workdir, options.chunks)
        targets.append(mock)
        say("starting lamplighter serve in front of it")
        targets.append(start_gateway(workdir, mock))
        shared = (
            ("gw-redis", "its traffic state in Redis", options.redis, None),
            ("gw-pg", "its store in PostgreSQL", None, options.postgres),
        )
        for name, what, redis_url, database_url in shared:
            if not (redis_url or database_url):
                continue
            say(f"starting lamplighter serve with {what}")
            try:
                gateway = start_gateway(
                    workdir, mock, redis_url=redis_url, database_url=database_url
                )
                targets.append(gateway)
            except NotAvailable as exc:
                unavailable[name] = str(exc)
                say(f"the gateway with {what} is NOT measured: {exc}")
        if options.floor:
            say("starting the floor in front of it, bare and with a durable commit")
            for name, durable in zip(FLOORS, (False, True), strict=True):
                try:
                    targets.append(start_floor(workdir, mock, durable=durable))
                except NotAvailable as exc:
                    unavailable[name] = str(exc)
                    say(f"{name} is NOT measured: {exc}")
        if options.skip_litellm:
            unavailable["litellm"] = "skipped (--skip-litellm)"
        else:
            say("starting the LiteLLM proxy in front of it")
            try:
                targets.append(start_litellm(workdir, mock, say))
            except NotAvailable as exc:
                unavailable["litellm"] = str(exc)
                say(f"LiteLLM is NOT compared: {exc}")
        for target in targets[1:]:
            target.check()  # a first request each: connections and imports are warm
        cells = []
        kinds = [(False, options.chunks), (True, options.chunks), (True, options.long_chunks)]
        for n in options.concurrency:
            for stream, tokens in kinds:
                for target in targets:
                    kind = "streamed" if stream else "whole"
                    say(f"  {target.name:<8} {kind:<8} {tokens:>4} tokens x{n}")
                    cells.append(cell(target, options, stream, n, tokens, mock))
        memory = {t.name: round(t.rss() / 2**20, 1) for t in targets}
    finally:
        for target in reversed(targets):
            target.stop()
    compared = compare(cells, options)
    return {
        "cells": cells,
        "compared": compared,
        "checks": checks(cells, compared, options),
        "rss_mb_after": memory,
        "unavailable": unavailable,
    }


def soak(options: Options, workdir: Path, say: Say) -> dict[str, Any]:
    warmup = options.soak_warmup
    if warmup is None:
        warmup = min(60.0, options.soak / 5)
    targets: list[Target] = []
    samples: list[tuple[float, float]] = []
    try:
        say(f"starting a mock upstream ({options.soak_chunk_ms:g} ms before each chunk)")
        mock = start_mock(workdir, options.chunks, options.soak_chunk_ms)
        targets.append(mock)
        gateway = start_gateway(workdir, mock, capacity=max(1024, options.soak_streams * 2))
        targets.append(gateway)
        began = time.monotonic()

        def sample() -> None:
            at = time.monotonic() - began
            mb = gateway.rss() / 2**20
            samples.append((round(at, 1), round(mb, 2)))
            if len(samples) % 12 == 1:
                say(f"  {at:6.0f} s  gateway RSS {mb:.1f} MB")

        sample()
        spec = {
            "concurrency": options.soak_streams,
            "warmup": warmup,
            "duration": max(1.0, options.soak - warmup),
            "stream": True,
            "chunks": options.chunks,
        }
        say(f"soak: {options.soak_streams} streams for {options.soak:g} s ({warmup:g} s warm-up)")
        load = drive(gateway, spec, sample, options.soak_interval, beside=(mock,))
        sample()
        if not gateway.alive():
            raise NotAvailable(f"the gateway died during the soak:\n{gateway.log_tail()}")
    finally:
        for target in reversed(targets):
            target.stop()
    after = [mb for at, mb in samples if at >= warmup]
    base = statistics.median(after[:3]) if after else None
    end = statistics.median(after[-3:]) if after else None
    growth = None if not base or end is None else round((end - base) / base, 4)
    return {
        "streams": options.soak_streams,
        "seconds": options.soak,
        "warmup_s": warmup,
        "chunk_delay_ms": options.soak_chunk_ms,
        "chunks": options.chunks,
        "rss_mb": samples,
        "rss_mb_at_warm": base,
        "rss_mb_at_end": end,
        "rss_mb_peak": max(after) if after else None,
        "growth": growth,
        "slope_mb_per_min": _slope([(at, mb) for at, mb in samples if at >= warmup]),
        "load": load,
        "check": {
            "check": "RSS growth after warm-up",
            "value": growth,
            "target": f"< {SOAK_GROWTH:.0%}",
            "ok": growth is not None and growth < SOAK_GROWTH,
        },
    }


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares MB per minute."""
    if len(points) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    if not spread:
        return None
    return round(60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread, 3)


def bench(options: Options, say: Say = _quiet) -> dict[str, Any]:
    """Run the matrix (or, with ``options.soak``, the soak) and return every figure."""
    if options.long_chunks <= options.chunks:
        raise ValueError("long_chunks must be more than chunks")
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": asdict(options),
        "model": MODEL,
    }
    with tempfile.TemporaryDirectory(prefix="lamplighter-overhead-") as tmp:
        if options.soak > 0:
            result["soak"] = soak(options, Path(tmp), say)
        else:
            result.update(matrix(options, Path(tmp), say))
    return result


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# The comparisons ``compare`` makes, as the report words them: (requests/s key, its words, CPU a
# request key, its words).
RATIO_LINES = (
    (
        "gateway_over_litellm_rps",
        "gateway's requests/s over LiteLLM's",
        "litellm_cpu_over_gateway",
        "LiteLLM's CPU a request over the gateway's",
    ),
    (
        "redis_rps_over_gateway",
        "with Redis, requests/s over without",
        "redis_cpu_over_gateway",
        "CPU a request over without",
    ),
    (
        "pg_rps_over_gateway",
        "on PostgreSQL, requests/s over on SQLite",
        "pg_cpu_over_gateway",
        "CPU a request over on SQLite",
    ),
)


def render(result: dict[str, Any]) -> str:
    """The result as text tables."""
    lines: list[str] = []
    if "cells" in result:
        options = result["options"]
        lines.append(
            f"{result['machine']['cpus']} CPUs; {options['duration']:g} s a cell after "
            f"{options['warmup']:g} s warm-up; answers of {options['chunks']} tokens "
            f"(and {options['long_chunks']} streamed, for the CPU a chunk costs)"
        )
        head = (
            f"{'':9}{'tok':>4}{'c':>4} {'target':<8}{'req/s':>8}{'p50 ms':>9}{'+p50':>9}"
            f"{'p99 ms':>9}{'+p99':>9}{'1st p50':>9}{'CPU ms/req':>11}{'cores':>6}{'others':>7}"
        )
        compared = {(r["stream"], r["concurrency"]): r for r in result["compared"]["rows"]}
        kinds = [(False, options["chunks"]), (True, options["chunks"])]
        kinds.append((True, options["long_chunks"]))
        for stream, tokens in kinds:
            lines += ["", head]
            for c in result["cells"]:
                if c["stream"] != stream or c["tokens"] != tokens:
                    continue
                added: dict[str, Any] = {}
                if tokens == options["chunks"]:
                    added = compared.get((stream, c["concurrency"]), {}).get(c["target"], {})
                lat = c["latency_ms"]
                lines.append(
                    f"{'streamed' if stream else 'whole':9}{tokens:>4}{c['concurrency']:>4} "
                    f"{c['target']:<8}{_f(c['requests_per_s'], 0):>8}{_f(lat['p50']):>9}"
                    f"{_f(added.get('added_p50_ms')):>9}{_f(lat['p99'], 1):>9}"
                    f"{_f(added.get('added_p99_ms'), 1):>9}{_f(c['first_chunk_ms']['p50']):>9}"
                    f"{_f(c['cpu_ms_per_request'], 3):>11}{_f(c['server_cores']):>6}"
                    f"{_f(c['other_cores']):>7}"
                    + (" noisy" if c["other_cores"] >= NOISY_CORES else "")
                    + (f"  {c['errors']} errors" if c["errors"] else "")
                )
        lines.append(
            "+p50, +p99: over the mock alone; 1st: to the first content chunk; cores: the "
            "server's;\nothers: cores the rest of the machine used meanwhile (noisy from "
            f"{NOISY_CORES:g})"
        )
        lines.append("")
        for rps, rps_says, cpu, cpu_says in RATIO_LINES:
            for row in result["compared"]["rows"]:
                if rps in row:
                    lines.append(
                        f"{'streamed' if row['stream'] else 'whole':9}x{row['concurrency']:<3} "
                        f"{rps_says}: {_f(row[rps])}; {cpu_says}: {_f(row[cpu])}"
                    )
        for row in result["compared"]["rows"]:
            if all(name in row for name in ("gateway", *FLOORS)):
                key = "added_first_chunk_p50_ms" if row["stream"] else "added_p50_ms"
                floor, durable, gateway = (row[name][key] for name in (*FLOORS, "gateway"))
                lines.append(
                    f"{'streamed' if row['stream'] else 'whole':9}x{row['concurrency']:<3} "
                    f"added p50 ms{' to the first chunk' if row['stream'] else ''}: the floor "
                    f"{_f(floor)}, with a durable commit {_f(durable)}, the gateway {_f(gateway)}"
                )
        for name, values in result["compared"]["cpu_ms_per_chunk"].items():
            shown = ", ".join(f"x{n}: {_f(v, 4)}" for n, v in values.items())
            lines.append(f"CPU ms per relayed chunk, {name}: {shown}")
        for name, why in result["unavailable"].items():
            lines.append(f"{name} not measured: {why}")
        lines.append("")
        lines += [_check_line(check) for check in result["checks"]]
    if "soak" in result:
        s = result["soak"]
        lines.append(
            f"soak: {s['streams']} streams for {s['seconds']:g} s, {s['chunks']} chunks "
            f"{s['chunk_delay_ms']:g} ms apart; {_f(s['load']['requests_per_s'], 1)} req/s, "
            f"{s['load']['errors']} errors, gateway {_f(s['load']['server_cores'])} cores, "
            f"others {_f(s['load'].get('other_cores'))}"
        )
        lines.append(
            f"RSS MB: at start {_f(s['rss_mb'][0][1], 1)}, after warm-up "
            f"{_f(s['rss_mb_at_warm'], 1)}, peak {_f(s['rss_mb_peak'], 1)}, end "
            f"{_f(s['rss_mb_at_end'], 1)}; slope {_f(s['slope_mb_per_min'], 3)} MB/min"
        )
        lines.append(_check_line(s["check"]))
    return "\n".join(lines)


def _check_line(check: dict[str, Any]) -> str:
    value = check.get("value_ms", check.get("value"))
    verdict = "PASS" if check["ok"] else "MISS"
    return f"{verdict}  {check['check']}: {value} (target {check['target']})"


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"--concurrency takes numbers like 1,8,64, not {text!r}") from exc
    if not values or min(values) < 1:
        raise ValueError("--concurrency needs at least one number, each 1 or more")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured a cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--chunks", type=int, default=32, help="tokens (chunks) an answer")
    parser.add_argument("--long-chunks", type=int, default=128, help="for the CPU a chunk costs")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--redis", help="also a gateway with its traffic state in this Redis")
    parser.add_argument("--postgres", help="also a gateway with its store in this PostgreSQL")
    parser.add_argument("--floor", action="store_true", help="also the stack's floor")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds; runs the soak instead")
    parser.add_argument("--soak-streams", type=int, default=500)
    parser.add_argument("--soak-chunk-ms", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    options = Options(
        concurrency=parse_concurrency(args.concurrency),
        duration=args.duration,
        warmup=args.warmup,
        chunks=args.chunks,
        long_chunks=args.long_chunks,
        skip_litellm=args.skip_litellm,
        redis=args.redis,
        postgres=args.postgres,
        floor=args.floor,
        soak=args.soak,
        soak_streams=args.soak_streams,
        soak_chunk_ms=args.soak_chunk_ms,
    )
    result = bench(options, lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result) if args.json else render(result))


if __name__ == "__main__":
    main()
