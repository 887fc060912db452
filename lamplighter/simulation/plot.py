"""The surge sweep as a picture: SLO attainment, goodput and waste against overload.

Needs matplotlib (a development extra); it is imported only when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLAN_COLOURS = {"team": "#1b7837", "plus": "#2166ac", "free": "#b2182b"}
POLICY_STYLES = {"lamplighter": "-", "fifo": "--"}


INSTALL = (
    "--plot needs matplotlib, which is not installed: install it into Lamplighter's "
    "environment (.venv/bin/pip install matplotlib, or pip install -e '.[dev]' from the "
    "repository), or leave out --plot"
)


def check() -> None:
    """Refuse at once when matplotlib is missing, before a sweep of minutes is run for
    nothing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(INSTALL) from exc


def plot_sweep(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Write the sweep's curves as a PNG at ``path``."""
    check()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overloads = [run["overload"] for run in runs]
    setup = runs[0]["setup"]
    figure, (slo, good, waste) = plt.subplots(1, 3, figsize=(16, 4.8))
    for policy, style in POLICY_STYLES.items():
        plans = runs[0]["policies"][policy]["plans"]
        for plan in plans:
            slo.plot(
                overloads,
                [run["policies"][policy]["plans"][plan]["slo_attainment"] for run in runs],
                style,
                marker="o",
                color=PLAN_COLOURS.get(plan),
                label=f"{policy} {plan}",
            )
        good.plot(
            overloads,
            [run["policies"][policy]["goodput_fraction"] for run in runs],
            style,
            marker="o",
            color="black",
            label=f"{policy} goodput",
        )
        good.plot(
            overloads,
            [run["policies"][policy]["utilization"] for run in runs],
            style,
            marker="x",
            color="grey",
            label=f"{policy} utilization",
        )
        waste.plot(
            overloads,
            [run["policies"][policy]["wasted_token_fraction"] for run in runs],
            style,
            marker="o",
            color="#762a83",
            label=f"{policy} wasted tokens",
        )
        waste.plot(
            overloads,
            [run["policies"][policy]["silent_timeouts"] / run["setup"]["requests"] for run in runs],
            style,
            marker="x",
            color="#e08214",
            label=f"{policy} silent timeouts",
        )
    titles = (
        "TTFT SLO attainment by plan",
        "fraction of capacity: goodput and utilization",
        "wasted tokens and silent timeouts (share)",
    )
    for axes, title in zip((slo, good, waste), titles, strict=True):
        axes.set_xscale("log")
        axes.set_xticks(overloads, [f"{x:g}x" for x in overloads])
        axes.minorticks_off()
        axes.set_xlabel("offered load / capacity")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    slo.set_ylim(-0.02, 1.02)
    waste.set_ylim(-0.02, 1.02)
    figure.suptitle(
        f"Surge: {setup['model']}, capacity {runs[0]['capacity_tokens_per_s']:.0f} output "
        f"tokens/s, {setup['slots']} slots; lamplighter solid, fifo dashed"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
