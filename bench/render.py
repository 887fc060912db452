"""The web chat's rendering cost while an answer streams.

The page gets each answer's Markdown rendered to sanitized HTML by the server, again and again
as the answer grows (see ``lamplighter/web/api.py``). This replays a 2000-token, 8 KB Markdown
answer arriving at 100 tokens/s through the real renderer, once with a fixed 100 ms cadence and
once with the adaptive throttle the server uses, and prints the share of the stream's time the
event loop spends rendering. Time between tokens is simulated; render times are measured.

    .venv/bin/python -m bench.render
"""

from __future__ import annotations

import time

from lamplighter.web.api import HTML_INTERVAL_S, RENDER_SHARE
from lamplighter.web.markdown import render

UNIT = (
    "Here is a paragraph with **bold** and `code`.\n\n- item one\n- item two\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint('x')\n```\n\n"
)
TOKEN_INTERVAL_S = 0.010


def replay(adaptive: bool, pieces: list[str]) -> tuple[int, float, float]:
    """(renders, seconds rendering, seconds of stream)."""
    clock = spent = 0.0
    renders = 0
    next_render = HTML_INTERVAL_S
    for index in range(len(pieces)):
        clock += TOKEN_INTERVAL_S
        if clock >= next_render:
            started = time.perf_counter()
            render("".join(pieces[: index + 1]))
            cost = time.perf_counter() - started
            spent, clock, renders = spent + cost, clock + cost, renders + 1
            wait = max(HTML_INTERVAL_S, RENDER_SHARE * cost) if adaptive else HTML_INTERVAL_S
            next_render = clock + wait
    return renders, spent, clock


def main() -> None:
    text = (UNIT * 200)[:8000]
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    shares = {}
    for name, adaptive in (("fixed 100 ms", False), ("adaptive", True)):
        renders, spent, total = replay(adaptive, pieces)
        shares[name] = spent / total
        print(
            f"{name:>12}: {renders} renders, {spent * 1000:.0f} ms rendering in "
            f"{total:.1f} s of stream = {spent / total:.1%} of the event loop"
        )
    print(f"adaptive / fixed: {shares['adaptive'] / shares['fixed 100 ms']:.2f}")


if __name__ == "__main__":
    main()
