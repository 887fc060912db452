"""``lamplighter top``: the console's live figures in a terminal, for servers without a browser.

It polls ``GET /api/admin/stats`` of a running instance with an admin API key and redraws a
screen like ``htop``: request and token rates with a sparkline of the last minutes, time to
first token per plan, backends (health, slots in use, queue), refusals by reason, cache hit rate
and error rate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """The last ``width`` values as block characters, scaled to the largest."""
    values = list(values)[-width:]
    top = max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1)))] for v in values)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


class StatsClient:
    def __init__(self, url: str, key: str, timeout: float = 10.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers={"authorization": f"Bearer {key}"}, timeout=timeout
        )
        self.points: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    def poll(self) -> dict[str, Any]:
        """Fetch the points since the last poll; keep the last hour."""
        since = self.points[-1]["t"] if self.points else None
        params = {"since": since} if since is not None else {}
        response = self.http.get("/api/admin/stats", params=params)
        if response.status_code == 404:
            raise PermissionError("not an admin API key (or not a Lamplighter server)")
        if response.status_code in (401, 403):
            raise PermissionError(f"the key was refused ({response.status_code})")
        response.raise_for_status()
        self.last = response.json()
        self.points = (self.points + self.last["points"])[-720:]
        return self.last

    def close(self) -> None:
        self.http.close()


def render(stats: dict[str, Any], points: Sequence[dict[str, Any]], url: str) -> Group:
    """One screen."""
    latest = points[-1] if points else {}
    rates = [p["requests_per_s"] for p in points]
    header = Text.assemble(
        ("lamplighter top", "bold"),
        f"  {url}  ",
        (time.strftime("%H:%M:%S", time.localtime(stats.get("now", time.time()))), "dim"),
        f"  every {stats.get('interval_s', 0):g}s",
    )
    traffic = Table.grid(padding=(0, 2))
    traffic.add_row("requests/s", f"{latest.get('requests_per_s', 0):.2f}", sparkline(rates))
    traffic.add_row(
        "tokens/s",
        f"{latest.get('tokens_per_s', 0):.0f}",
        sparkline([p["tokens_per_s"] for p in points]),
    )
    traffic.add_row(
        "streams",
        str(stats.get("totals", {}).get("active_streams", 0)),
        f"error rate {percent(latest.get('error_rate'))}   "
        f"cache hit rate {percent(latest.get('cache_hit_rate'))}   "
        f"total requests {stats.get('totals', {}).get('requests', 0)}   "
        f"refused {stats.get('totals', {}).get('refusals', 0)}",
    )

    ttft = Table(title="time to first token", title_justify="left", expand=False)
    ttft.add_column("plan")
    ttft.add_column("p50", justify="right")
    ttft.add_column("p99", justify="right")
    recent = _recent_ttft(points)
    for plan, (p50, p99) in sorted(recent.items()):
        ttft.add_row(plan, seconds(p50), seconds(p99))

    backends = Table(title="backends", title_justify="left")
    for column in ("backend", "state", "in use", "queued", "utilisation"):
        backends.add_column(column, justify="left" if column in ("backend", "state") else "right")
    for backend in stats.get("backends", []):
        backends.add_row(
            backend["name"],
            Text("up", "green") if backend["ready"] else Text("DOWN", "bold red"),
            f"{backend['in_use']}/{backend['capacity']}",
            str(backend["queued"]),
            _bar(backend["utilization"]),
        )

    refusals = Table(title="refusals (last minute)", title_justify="left")
    refusals.add_column("reason")
    refusals.add_column("count", justify="right")
    window = max(1, int(60 / max(stats.get("interval_s", 5), 1)))
    counted: dict[str, int] = {}
    for point in points[-window:]:
        for reason, n in point["refusals"].items():
            counted[reason] = counted.get(reason, 0) + n
    for reason, n in sorted(counted.items(), key=lambda item: -item[1]):
        refusals.add_row(reason, str(n))
    if not counted:
        refusals.add_row(Text("none", "dim"), "0")
    return Group(Panel(Group(header, traffic)), ttft, backends, refusals)


def _recent_ttft(points: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Each plan's latest p50 and p99 (the newest point that saw its requests)."""
    found: dict[str, tuple[float, float]] = {}
    for point in points:
        for plan, p50 in point["ttft_p50"].items():
            found[plan] = (p50, point["ttft_p99"][plan])
    return found


def _bar(share: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, share)) * width)
    return "█" * filled + "·" * (width - filled) + f" {share * 100:3.0f}%"
