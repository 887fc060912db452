"""Request traces: arrival times and token counts of real traffic, to replay in virtual time.

The bundled trace is the conversation half of the Azure LLM inference trace 2023 (CC-BY 4.0,
Patel et al., "Splitwise", ISCA 2024; see ``data/README.md``): one hour of a production service,
one row per request with its arrival time, its context (prompt) tokens and the tokens generated
for it. Any CSV with the same three columns can be replayed instead.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BUNDLED = "azure-llm-2023-conv.csv"


@dataclass(frozen=True)
class TraceRequest:
    at: float  # seconds after the trace's first request
    prompt_tokens: int
    output_tokens: int


def bundled_path() -> Path:
    """The trace shipped inside the package."""
    return Path(str(resources.files("lamplighter.simulation") / "data" / BUNDLED))


def load(path: Path | None = None, *, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace (the bundled one by default), in arrival order; ``limit`` keeps the first
    requests only."""
    source = path or bundled_path()
    requests: list[TraceRequest] = []
    start: datetime | None = None
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{source}: missing columns {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(requests) >= limit:
                break
            try:
                # Seven digits of fractions of a second; datetime takes six.
                when = datetime.fromisoformat(row["TIMESTAMP"].strip()[:26])
                prompt = int(row["ContextTokens"])
                output = int(row["GeneratedTokens"])
            except ValueError as exc:
                raise ValueError(f"{source}, line {line}: {exc}") from exc
            if prompt < 1 or output < 1:
                raise ValueError(f"{source}, line {line}: token counts must be positive")
            start = start or when
            at = (when - start).total_seconds()
            if requests and at < requests[-1].at:
                raise ValueError(f"{source}, line {line}: arrivals must be in time order")
            requests.append(TraceRequest(at, prompt, output))
    if not requests:
        raise ValueError(f"{source}: no requests")
    return requests


@dataclass(frozen=True)
class Shape:
    """What a trace looks like, for docs and for sizing the simulated backend."""

    requests: int
    span_s: float
    requests_per_s: float
    prompt_p50: int
    prompt_p99: int
    output_p50: int
    output_p99: int
    output_tokens: int
    output_tokens_per_s: float


def describe(trace: Sequence[TraceRequest]) -> Shape:
    prompts = sorted(r.prompt_tokens for r in trace)
    outputs = sorted(r.output_tokens for r in trace)
    span = trace[-1].at - trace[0].at
    total = sum(outputs)
    return Shape(
        requests=len(trace),
        span_s=span,
        requests_per_s=len(trace) / span if span > 0 else math.inf,
        prompt_p50=_rank(prompts, 0.5),
        prompt_p99=_rank(prompts, 0.99),
        output_p50=_rank(outputs, 0.5),
        output_p99=_rank(outputs, 0.99),
        output_tokens=total,
        output_tokens_per_s=total / span if span > 0 else math.inf,
    )


def sample(trace: Sequence[TraceRequest], count: int) -> list[TraceRequest]:
    """Every k-th request, ``count`` in all: the trace's mix of lengths without its timing."""
    if count >= len(trace):
        return list(trace)
    stride = len(trace) / count
    return [trace[int(i * stride)] for i in range(count)]


def _rank(ordered: Sequence[int], q: float) -> int:
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]
