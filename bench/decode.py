"""Decode throughput: Lamplighter's streaming HTTP API against llama-cpp-python called directly.

What is measured
    The *decode* rate, in tokens per second, of the same GGUF model on the same number of CPU
    threads, generating from the same chat-templated prompt with the same seed and sampling
    settings:

    - **direct**: ``llama_cpp.Llama.generate`` in this process, timed token by token, exactly as
      a program that embeds llama-cpp-python itself would run it;
    - **api**: a real ``lamplighter serve`` in a subprocess, streamed through
      ``POST /v1/chat/completions`` (``stream=true``) over loopback HTTP, timed as SSE frames
      arrive here.

    Prompt processing is left out on both sides: the rate is the number of decode steps between
    the first and the last visible token divided by the time between them. An end-of-turn token
    ends the answer but is not shown, so neither side times it. On the API side the token count
    comes from ``usage.completion_tokens`` of the final chunk.

Why
    Everything the service adds per token (the worker thread handing tokens to the event loop,
    detokenizing, stop matching, the chat service's checkpoints, SSE framing, uvicorn, the
    socket) competes with llama.cpp for the same cores and for the GIL. The ratio
    ``api / direct`` says how much of the engine's speed reaches a client; the goal is >= 0.95.

How
    Both models stay loaded across rounds and run strictly one after the other (direct, api,
    direct, api, ...), never at the same time: on a small machine they would fight for the
    cores. One unrecorded warm-up round comes first. The report gives the median of each side,
    the ratio of the medians, and each round's own ratio.

Noise
    llama.cpp keeps every thread it is given busy (its OpenMP workers spin at each barrier), so
    one other busy process on a 2-core machine can slow a side several-fold. Before each
    generation the benchmark waits (a bounded while) until other processes leave the cores
    alone, and it measures, from /proc, how many cores the rest of the machine used during the
    generation ("others"). A round in which others used a noticeable share is reported but not
    counted, and another round is run in its place, within a time budget of a few minutes.
    The direct side runs on this process's main thread only: a second thread driving llama.cpp
    would give OpenMP a second worker pool, and with more workers than cores libgomp stops
    spinning, which slows decoding by a third.

Run it from the repository root with ``make bench`` or ``.venv/bin/python -m bench.decode``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import GenerationRequest
from lamplighter.engines.embedded import EmbeddedBackend, bundled_model_path

PROMPT = "Explain in detail how a steam engine works, step by step."
SEED = 1234
TEMPERATURE = 0.8
TOP_P = 1.0  # the API's default when a request leaves top_p out
N_CTX = 2048  # the server's default context window
ADMIN_EMAIL = "admin@localhost"  # the admin the server creates on its first start
TARGET = 0.95
PAUSE_SECONDS = 0.5  # between sides, so one side's spinning threads have gone quiet
QUIET_CORES = 0.15  # other processes' CPU use below which the machine counts as quiet
QUIET_WAIT_SECONDS = 15.0  # how long to wait for quiet before a sample, at most
SAMPLE_LIMIT_SECONDS = 60.0  # a generation still running after this is cut short (finish "timeout")
TIME_BUDGET_SECONDS = 240.0  # no replacement round starts after this; keeps the run to minutes
READY_TIMEOUT = 180.0


class BenchError(RuntimeError):
    """The benchmark could not run (the server failed to start, a request failed, ...)."""


@dataclass(frozen=True)
class Sample:
    """One generation, timed. ``tokens`` counts every generated token (an end-of-turn one too);
    ``timed`` counts the visible tokens whose arrival was timed. ``own_cores`` and
    ``other_cores`` are the CPU cores the benchmark (with its server) and everything else on the
    machine kept busy meanwhile, where /proc tells."""

    tokens: int
    timed: int
    seconds: float
    finish: str
    text: str
    own_cores: float | None = None
    other_cores: float | None = None

    @property
    def rate(self) -> float:
        """Decode tokens per second: steps between the first and last timed token."""
        if self.timed < 2 or self.seconds <= 0:
            return float("nan")
        return (self.timed - 1) / self.seconds


@dataclass(frozen=True)
class Round:
    number: int
    direct: Sample
    api: Sample

    @property
    def ratio(self) -> float:
        return self.api.rate / self.direct.rate

    @property
    def noisy(self) -> bool:
        """Other processes took CPU while one of the sides ran: the figures say little."""
        return any(
            s.other_cores is not None and s.other_cores >= QUIET_CORES
            for s in (self.direct, self.api)
        )


# --- the machine's load: is someone else using the cores? ---------------------------------------


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    busy: float  # CPU seconds the whole machine spent busy (steal included: the host took it)
    ours: float  # CPU seconds of the given processes


def cpu_snapshot(pids: Sequence[int]) -> CpuSnapshot | None:
    """Linux only; None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        ours = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            rest = stat[stat.rindex(")") + 2 :].split()
            ours += int(rest[11]) + int(rest[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    busy = user + nice + system + irq + softirq + steal
    return CpuSnapshot(time.monotonic(), busy / _TICKS, ours / _TICKS)


def cores_used(
    before: CpuSnapshot | None, after: CpuSnapshot | None
) -> tuple[float | None, float | None]:
    """(ours, others): the cores each kept busy on average between two snapshots."""
    if before is None or after is None or after.wall <= before.wall:
        return None, None
    wall = after.wall - before.wall
    ours = (after.ours - before.ours) / wall
    others = max(0.0, (after.busy - before.busy) / wall - ours)
    return ours, others


def wait_for_quiet(pids: Sequence[int]) -> float | None:
    """Pause, then wait (a bounded while) until other processes leave the cores alone.

    Returns the other processes' load in the last window, in cores."""
    time.sleep(PAUSE_SECONDS)
    deadline = time.monotonic() + QUIET_WAIT_SECONDS
    told = False
    while True:
        before = cpu_snapshot(pids)
        time.sleep(0.5)
        _, others = cores_used(before, cpu_snapshot(pids))
        if others is None or others < QUIET_CORES or time.monotonic() >= deadline:
            return others
        if not told:
            progress(f"  other processes keep {others:.1f} cores busy; waiting for quiet")
            told = True


def timed_with_load(pids: Sequence[int], run: Callable[[], Sample]) -> Sample:
    wait_for_quiet(pids)
    before = cpu_snapshot(pids)
    sample = run()
    own, others = cores_used(before, cpu_snapshot(pids))
    return replace(sample, own_cores=own, other_cores=others)


# --- direct: llama-cpp-python in this process ----------------------------------------------------


class Direct:
    """The baseline: a ``Llama`` built as the embedded engine builds it, driven in a bare loop."""

    def __init__(self, model_path: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(model_path),
            n_ctx=N_CTX,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def run(self, prompt: Sequence[int], max_tokens: int) -> Sample:
        import llama_cpp

        llm = self.llm
        # As the server does for a seeded request: same seed, prompt evaluated from scratch.
        llm.set_seed(SEED)
        llm.reset()  # type: ignore[no-untyped-call]  # untyped in llama-cpp-python
        vocab = llm._model.vocab
        stamps: list[float] = []
        shown: list[int] = []
        generated = 0
        finish = "length"
        deadline = time.perf_counter() + SAMPLE_LIMIT_SECONDS
        tokens = llm.generate(prompt, temp=TEMPERATURE, top_p=TOP_P, reset=True)
        try:
            for token in tokens:
                now = time.perf_counter()
                generated += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                stamps.append(now)
                shown.append(token)
                if generated >= max_tokens:
                    break
                if now > deadline:
                    finish = "timeout"
                    break
        finally:
            tokens.close()
        text = llm.detokenize(shown).decode("utf-8", errors="replace")
        seconds = stamps[-1] - stamps[0] if stamps else 0.0
        return Sample(generated, len(stamps), seconds, finish, text)


def prompt_tokens(model_path: Path, threads: int, max_tokens: int) -> list[int]:
    """The exact token list the server feeds the model, from the embedded engine's own
    ``prepare`` (chat template, BOS, special tokens)."""

    async def prepare() -> list[int]:
        backend = EmbeddedBackend(model_path, "bench", n_ctx=N_CTX, n_threads=threads)
        await backend.load()
        try:
            prepared = await backend.prepare(
                GenerationRequest(
                    model="bench",
                    turns=(Turn("user", PROMPT),),
                    max_tokens=max_tokens,
                    temperature=TEMPERATURE,
                    top_p=TOP_P,
                    seed=SEED,
                )
            )
        finally:
            await backend.close()
        return list(prepared.payload)

    return asyncio.run(prepare())


# --- api: a real `lamplighter serve` in a subprocess --------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def lamplighter_command() -> str:
    beside = Path(sys.executable).parent / "lamplighter"
    if beside.is_file():
        return str(beside)
    found = shutil.which("lamplighter")
    if found is None:
        raise BenchError("the `lamplighter` command is not installed (make install)")
    return found


class Server:
    """``lamplighter serve`` on a free port with its own data directory, and a client for it."""

    def __init__(self, workdir: Path, threads: int) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.command = lamplighter_command()
        # Nothing inherited: a LAMPLIGHTER_DATABASE_URL or MODEL_PATH of this shell must not
        # point the benchmark at someone's database or at another model.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPLIGHTER_")}
        # Every round asks the same seeded question: the response cache must not answer it, and
        # no rate limit may get in the way of the admin account the benchmark uses.
        config = workdir / "bench.toml"
        config.write_text(
            "[plans.team]\ncache_ttl_s = 0\nrequests_per_minute = 100000\n"
            "tokens_per_minute = 100000000\ntokens_per_day = 1000000000\n"
        )
        env.update(
            LAMPLIGHTER_CONFIG=str(config),
            LAMPLIGHTER_DATA_DIR=str(workdir / "data"),
            LAMPLIGHTER_PORT=str(self.port),
            LAMPLIGHTER_N_THREADS=str(threads),
            LAMPLIGHTER_HOST="127.0.0.1",
        )
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client | None = None
        self.model = ""

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            # A session of its own: Ctrl-C reaches only the benchmark, which then stops the
            # server in order.
            self.process = subprocess.Popen(
                [self.command, "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        key = self._create_key()
        self.client = httpx.Client(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(120.0, connect=10.0),
        )
        models = self.client.get("/v1/models")
        self._check(models)
        self.model = models.json()["data"][0]["id"]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=5.0) as probe:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise BenchError(f"the server exited with {self.process.returncode}")
                try:
                    if probe.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise BenchError(f"the server was not ready within {READY_TIMEOUT:.0f} s")

    def _create_key(self) -> str:
        done = subprocess.run(
            [self.command, "keys", "create", ADMIN_EMAIL],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = done.stdout.split()
        if done.returncode != 0 or not lines:
            raise BenchError(f"`lamplighter keys create` failed: {done.stderr.strip()}")
        return lines[-1]

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code != 200:
            response.read()
            raise BenchError(f"HTTP {response.status_code} from the server: {response.text}")

    def run(self, max_tokens: int) -> Sample:
        assert self.client is not None, "start() first"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "seed": SEED,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # Only stamp lines while streaming; parse afterwards, so that the client's own work
        # takes as little as possible from the cores the server is decoding on.
        lines: list[tuple[float, str]] = []
        deadline = time.perf_counter() + SAMPLE_LIMIT_SECONDS
        timed_out = False
        with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            self._check(response)
            for line in response.iter_lines():
                now = time.perf_counter()
                lines.append((now, line))
                if now > deadline:
                    # Leaving the stream disconnects; the server stops generating at once.
                    timed_out = True
                    break
        return self._parse(lines, timed_out=timed_out)

    @staticmethod
    def _parse(lines: list[tuple[float, str]], *, timed_out: bool = False) -> Sample:
        stamps: list[float] = []
        text: list[str] = []
        usage: dict[str, Any] | None = None
        finish = ""
        for stamp, line in lines:
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"the stream failed: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                content = choice["delta"].get("content")
                if content:
                    stamps.append(stamp)
                    text.append(content)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        if timed_out:
            # Cut short: no usage chunk came; every content chunk carried one token.
            generated = timed = len(stamps)
            finish = "timeout"
        elif usage is None:
            raise BenchError("the stream carried no usage chunk")
        else:
            generated = int(usage["completion_tokens"])
            # An end-of-turn token is counted in the usage but never shown, so never timed.
            timed = generated - 1 if finish == "stop" else generated
        seconds = stamps[-1] - stamps[0] if stamps else 0.0
        return Sample(generated, timed, seconds, finish, "".join(text))

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def running_server(threads: int) -> Iterator[Server]:
    """A started server in a temporary directory; stopped and removed however the block ends."""
    with tempfile.TemporaryDirectory(prefix="lamplighter-bench-") as workdir:
        server = Server(Path(workdir), threads)
        try:
            server.start()
            yield server
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            tail = server.log_tail()
            if tail:
                print(f"--- server log (last lines) ---\n{tail}", file=sys.stderr)
            raise
        finally:
            server.stop()


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    threads: int
    max_tokens: int
    rounds: int
    json: bool
    argv: tuple[str, ...]


def command_line(argv: Sequence[str]) -> str:
    """How this run was started, as one could type it again from the repository root."""
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, "-m", "bench.decode", *argv])


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode",
        description="Decode tokens/s through Lamplighter's HTTP API vs. llama-cpp-python direct.",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both sides (2)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per answer (256)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds counted (5); noisy ones are repeated"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    for name in ("threads", "max_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2 to time a decode step")
    return Options(args.threads, args.max_tokens, args.rounds, args.json, tuple(argv))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(options: Options) -> tuple[int, list[Round]]:
    model_path = bundled_model_path()
    progress(f"loading {model_path.name} for the direct side ({options.threads} threads)")
    prompt = prompt_tokens(model_path, options.threads, options.max_tokens)
    direct = Direct(model_path, options.threads)
    progress("starting `lamplighter serve`")
    rounds: list[Round] = []
    with running_server(options.threads) as server:
        progress(f"server ready on {server.base_url}; warm-up round")
        assert server.process is not None
        pids = (os.getpid(), server.process.pid)

        def run_direct() -> Sample:
            return direct.run(prompt, options.max_tokens)

        def run_api() -> Sample:
            return server.run(options.max_tokens)

        budget_end = time.monotonic() + TIME_BUDGET_SECONDS
        timed_with_load(pids, run_direct)
        timed_with_load(pids, run_api)
        # A round during which other processes used the CPU is repeated, up to as many extra
        # rounds as were asked for and while the time budget lasts; all of them are reported.
        for number in range(1, 2 * options.rounds + 1):
            if number > options.rounds and time.monotonic() > budget_end:
                progress(f"time budget of {TIME_BUDGET_SECONDS:.0f} s spent; no more rounds")
                break
            d = timed_with_load(pids, run_direct)
            a = timed_with_load(pids, run_api)
            done = Round(number, d, a)
            rounds.append(done)
            quiet = sum(not r.noisy for r in rounds)
            progress(
                f"round {number}: direct {d.rate:6.1f} tok/s, api {a.rate:6.1f} tok/s, "
                f"ratio {done.ratio:.3f}"
                + (
                    f"  (noisy, not counted: others used {_cores(d.other_cores)}/"
                    f"{_cores(a.other_cores)} cores)"
                    if done.noisy
                    else f"  ({quiet}/{options.rounds})"
                )
            )
            if quiet >= options.rounds:
                break
    return len(prompt), rounds


def summary(options: Options, prompt_len: int, rounds: list[Round]) -> dict[str, Any]:
    # The medians count the quiet rounds; should none have been quiet, every round.
    counted = [r for r in rounds if not r.noisy] or rounds
    direct = statistics.median(r.direct.rate for r in counted)
    api = statistics.median(r.api.rate for r in counted)
    ratio = api / direct
    return {
        "command": command_line(options.argv),
        "model": bundled_model_path().name,
        "threads": options.threads,
        "n_ctx": N_CTX,
        "prompt_tokens": prompt_len,
        "max_tokens": options.max_tokens,
        "seed": SEED,
        "temperature": TEMPERATURE,
        "rounds": [
            {
                "round": r.number,
                "counted": r in counted,
                "direct": {**_sample_fields(r.direct), "tokens_per_s": r.direct.rate},
                "api": {**_sample_fields(r.api), "tokens_per_s": r.api.rate},
                "ratio": r.ratio,
            }
            for r in rounds
        ],
        "rounds_requested": options.rounds,
        "rounds_counted": len(counted),
        "counted_noisy_rounds": any(r.noisy for r in counted),
        "median_direct_tokens_per_s": direct,
        "median_api_tokens_per_s": api,
        "ratio": ratio,
        "median_round_ratio": statistics.median(r.ratio for r in counted),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "same_output": all(r.direct.text == r.api.text for r in rounds),
    }


def _sample_fields(sample: Sample) -> dict[str, Any]:
    fields = asdict(sample)
    del fields["text"]
    return fields


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(result: dict[str, Any], out: TextIO) -> None:
    write = out.write
    write(f"command: {result['command']}\n")
    write(
        f"model {result['model']}, {result['threads']} threads, n_ctx {result['n_ctx']}, "
        f"prompt {result['prompt_tokens']} tokens, max_tokens {result['max_tokens']}, "
        f"seed {result['seed']}, temperature {result['temperature']}\n\n"
    )
    write(
        f"{'round':>6}  {'direct tok/s':>12}  {'api tok/s':>10}  {'ratio':>6}  "
        f"{'tokens d/a':>10}  {'own cores d/a':>13}  {'others d/a':>10}\n"
    )
    for r in result["rounds"]:
        d, a = r["direct"], r["api"]
        tokens = f"{d['tokens']}/{a['tokens']}"
        own = f"{_cores(d['own_cores'])}/{_cores(a['own_cores'])}"
        others = f"{_cores(d['other_cores'])}/{_cores(a['other_cores'])}"
        write(
            f"{r['round']:>6}  {d['tokens_per_s']:>12.1f}  {a['tokens_per_s']:>10.1f}  "
            f"{r['ratio']:>6.3f}  {tokens:>10}  {own:>13}  {others:>10}"
            + ("" if r["counted"] else "  noisy, not counted")
            + "\n"
        )
    write(
        f"{'median':>6}  {result['median_direct_tokens_per_s']:>12.1f}  "
        f"{result['median_api_tokens_per_s']:>10.1f}  {result['ratio']:>6.3f}  "
        f"(of {result['rounds_counted']} rounds)\n\n"
    )
    verdict = "meets" if result["meets_target"] else "is BELOW"
    write(
        f"api/direct (ratio of medians): {result['ratio']:.3f}, which {verdict} the target "
        f"of {result['target']}\n"
        f"median of the per-round ratios: {result['median_round_ratio']:.3f}\n"
    )
    if result["counted_noisy_rounds"]:
        write(
            "warning: no round ran on a quiet machine (see 'others', the cores other processes "
            "kept busy); these figures are unreliable\n"
        )
    elif result["rounds_counted"] < result["rounds_requested"]:
        write(
            f"warning: only {result['rounds_counted']} of {result['rounds_requested']} rounds "
            "ran on a quiet machine\n"
        )
    if not result["same_output"]:
        write("note: the two sides generated different text; their rates are less comparable\n")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup of the server and temp dir


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        prompt_len, rounds = measure(options)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    result = summary(options, prompt_len, rounds)
    if options.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        report(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
