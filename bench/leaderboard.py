"""Arena leaderboard and rater trust: how long the flywheel's vote maths takes at full size.

What is measured
    Wall time, one process, generation left out, of:

    - ``leaderboard()`` on ``--votes`` votes over ``--models`` models with ``--rounds`` bootstrap
      rounds (batched multinomial resampling of the (pair, outcome) cells);
    - a naive bootstrap on the same votes, for comparison: each of ``--naive-rounds`` rounds
      draws ``--votes`` votes with replacement and refits them with ``scores()``, which is how
      Arena's notebook does it. Its time per round, scaled to ``--rounds``, over the batched
      time is the speed-up printed;
    - ``check_voters()`` on the same votes (one leave-one-out fit per voter checked);
    - ``estimate()`` on ``--labels`` labels.

Why
    The leaderboard is rebuilt from every vote ever cast, and trust from every label: both have
    to stay interactive (a few seconds) on a 2-core machine at 100,000 votes and 1,000,000
    labels.

The data
    Votes: true strengths drawn from a normal distribution with a standard deviation of 100
    points; pairs drawn uniformly; 10% ties and 5% "both bad", the rest decided by the
    Bradley-Terry probability; voters drawn from 2,000. Labels: 200,000 items of random truth,
    5,000 raters of accuracy 0.9 (80%), 0.5 (15%) or 0.1 (5%), each label on a random item by a
    random rater.

Run it from the repository root: ``.venv/bin/python -m bench.leaderboard``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lamplighter.flywheel.leaderboard import Outcome, Vote, check_voters, leaderboard, scores
from lamplighter.flywheel.trust import Label, estimate

_VOTERS = 2_000
_ITEMS = 200_000
_RATERS = 5_000


def make_votes(n: int, models: int, rng: np.random.Generator) -> list[Vote]:
    names = [f"model-{i:02d}" for i in range(models)]
    strength = rng.normal(0, 100, models)
    a = rng.integers(0, models, n)
    b = (a + rng.integers(1, models, n)) % models
    p_a = 1 / (1 + 10 ** ((strength[b] - strength[a]) / 400))
    draw = rng.random(n)
    undecided = rng.choice(np.array(["", "tie", "both_bad"]), n, p=[0.85, 0.10, 0.05])
    decided = np.where(draw < p_a, "a", "b")
    winners: list[Outcome] = np.where(undecided == "", decided, undecided).tolist()
    voters = rng.integers(0, _VOTERS, n).tolist()
    return [
        Vote(f"voter-{v}", names[i], names[j], w)
        for v, i, j, w in zip(voters, a.tolist(), b.tolist(), winners, strict=True)
    ]


def make_labels(n: int, rng: np.random.Generator) -> list[Label]:
    accuracy = rng.choice([0.9, 0.5, 0.1], _RATERS, p=[0.8, 0.15, 0.05])
    truth = rng.integers(0, 2, _ITEMS)
    rater = rng.integers(0, _RATERS, n)
    item = rng.integers(0, _ITEMS, n)
    value = np.where(rng.random(n) < accuracy[rater], truth[item], 1 - truth[item])
    return [
        Label(f"rater-{r}", f"item-{i}", v)
        for r, i, v in zip(rater.tolist(), item.tolist(), value.tolist(), strict=True)
    ]


def naive_bootstrap(votes: list[Vote], rounds: int, rng: np.random.Generator) -> None:
    for _ in range(rounds):
        scores([votes[i] for i in rng.integers(0, len(votes), len(votes))])


def timed(label: str, seconds: float, detail: str = "") -> float:
    print(f"{label:<24}{seconds:8.2f} s  {detail}")
    return seconds


def run(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    votes = make_votes(args.votes, args.models, rng)
    print(f"votes: {len(votes):,} over {args.models} models; labels: {args.labels:,}")

    start = time.perf_counter()
    board = leaderboard(votes, rounds=args.rounds)
    batched = timed(f"leaderboard ({args.rounds} rounds)", time.perf_counter() - start)
    widths = [s.upper - s.lower for s in board]
    print(f"{'':<24}95% intervals {min(widths):.1f} to {max(widths):.1f} points wide")

    start = time.perf_counter()
    naive_bootstrap(votes, args.naive_rounds, rng)
    naive = time.perf_counter() - start
    per_round = naive / args.naive_rounds
    timed(f"naive ({args.naive_rounds} rounds)", naive, f"{per_round * 1000:.0f} ms a round")
    print(
        f"{'':<24}naive at {args.rounds} rounds ~ {per_round * args.rounds:.0f} s: "
        f"{per_round * args.rounds / batched:,.0f}x the batched bootstrap"
    )

    start = time.perf_counter()
    checks = check_voters(votes)
    flagged = sum(check.suspicious for check in checks)
    timed(
        "check_voters", time.perf_counter() - start, f"{len(checks):,} checked, {flagged} flagged"
    )

    labels = make_labels(args.labels, rng)
    start = time.perf_counter()
    trust = estimate(labels)
    timed(f"estimate ({len(labels):,})", time.perf_counter() - start, f"{len(trust.items):,} items")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--votes", type=int, default=100_000, help="votes for the leaderboard")
    parser.add_argument("--models", type=int, default=20, help="models voted on")
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    parser.add_argument("--naive-rounds", type=int, default=100, help="naive bootstrap rounds")
    parser.add_argument("--labels", type=int, default=1_000_000, help="labels for estimate()")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generators")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
