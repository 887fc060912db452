"""A leaderboard of anonymous models from side-by-side votes, as Chatbot Arena builds one.

A voter sees two answers, from models shown as A and B, and says which was better, or that they
tie, or that both are bad. The Bradley-Terry model explains the votes by one strength per model:
model i beats model j with probability ``1 / (1 + 10 ** ((s_j - s_i) / 400))``. ``scores`` is
the maximum-likelihood fit on that Elo-like scale, shifted so that the mean score is 1000.

Votes
    A tie and "both bad" count as half a win each way, as Arena counts them: both say the two
    models are about as good. A vote of a model against itself says nothing and is ignored, and
    a model seen only in such votes is not on the board.

The fit
    Newton's method on the log-likelihood of the votes aggregated per pair, plus a ridge of
    ``_RIDGE`` (a normal prior with a standard deviation of 10 natural-log units, about 1,700
    points). The ridge is what keeps a model that never loses finite; it shifts the scores of
    models with a few dozen votes by well under a point. It also fixes the otherwise free offset:
    where the votes fall into groups of models never compared with one another, each group is
    centred on its own, and scores across groups mean nothing.

Confidence intervals
    Percentile bootstrap: each round resamples the votes with replacement and refits. Resampling
    N votes with replacement is a multinomial draw of N over the (pair, outcome) cells with the
    cells' observed shares, so the rounds draw cell counts, never votes, and are fitted together
    as a batch of Newton iterations: a thousand rounds over 20 models take a fraction of a
    second whatever the number of votes. ``rank`` is Arena's: one plus the number of models
    whose lower bound is above this model's upper bound, so models that cannot be told apart
    share a rank.

Bad voters
    ``check_voters`` asks of each voter whether their decisive votes (A or B) agree with the
    board less often than an honest voter's would. The board it compares with is fitted without
    that voter's votes (exactly, for every voter checked: it is one more batch of fits), so a
    prolific voter cannot vouch for themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Outcome",
    "Standing",
    "Vote",
    "VoterCheck",
    "check_voters",
    "leaderboard",
    "scores",
]

Outcome = Literal["a", "b", "tie", "both_bad"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]

# A vote's outcome for the pair's first model (the lower index): it wins, loses, or they tie.
_FIRST, _SECOND, _TIE = 0, 1, 2
_OUTCOMES: Final[dict[str, int]] = {"a": _FIRST, "b": _SECOND, "tie": _TIE, "both_bad": _TIE}
_CENTRE: Final = 1000.0
_POINTS_PER_NAT: Final = 400 / math.log(10)
_RIDGE: Final = 0.01
_TOLERANCE: Final = 1e-8
# Newton steps are cut to this many natural-log units (about 350 points) per model, so that a
# first step from far away cannot overshoot; near the optimum steps are far smaller.
_MAX_STEP: Final = 2.0
_MAX_ITERATIONS: Final = 100
# Fits are batched so that one batch's arrays (n-by-n matrices and cell counts per row) hold
# about this many floats.
_BATCH_FLOATS: Final = 1 << 21


@dataclass(frozen=True)
class Vote:
    """One side-by-side judgement: ``voter`` saw ``a`` and ``b`` and chose ``winner``."""

    voter: str
    a: str
    b: str
    winner: Outcome


@dataclass(frozen=True)
class Standing:
    """A model's line on the board; ``ties`` counts both ties and "both bad"."""

    rank: int
    model: str
    score: float
    lower: float
    upper: float
    votes: int
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True)
class VoterCheck:
    """How a voter's decisive votes compare with what an honest voter would give.

    ``agreement`` is the share of their ``votes`` that went to the model the board (fitted
    without them) favours; ``expected`` the share an honest voter reaches on the same pairs;
    ``p_value`` the chance that an honest voter agrees this little or less.
    """

    voter: str
    votes: int
    agreement: float
    expected: float
    p_value: float
    suspicious: bool


@dataclass(frozen=True)
class _Tally:
    """Votes between two different models, as indices.

    Models and voters are sorted by name. Pairs are the distinct (first, second) model pairs
    with first < second; each vote has a pair and an outcome from the first model's side.
    """

    models: list[str]
    voters: list[str]
    first: _I64
    second: _I64
    voter: _I64
    pair: _I64
    outcome: _I64

    def cells(self) -> _F64:
        """Votes per (pair, outcome) cell, cell ``3 * pair + outcome``."""
        cells: _F64 = np.bincount(
            3 * self.pair + self.outcome, minlength=3 * self.first.size
        ).astype(np.float64)
        return cells


def _tally(votes: Sequence[Vote]) -> _Tally:
    valid = [vote for vote in votes if vote.a != vote.b]
    for vote in valid:
        if vote.winner not in _OUTCOMES:
            raise ValueError(f"unknown outcome {vote.winner!r} (voter {vote.voter!r})")
    models = sorted({vote.a for vote in valid} | {vote.b for vote in valid})
    voters = sorted({vote.voter for vote in valid})
    model_index = {model: i for i, model in enumerate(models)}
    voter_index = {voter: i for i, voter in enumerate(voters)}
    a = np.array([model_index[vote.a] for vote in valid], dtype=np.int64)
    b = np.array([model_index[vote.b] for vote in valid], dtype=np.int64)
    outcome = np.array([_OUTCOMES[vote.winner] for vote in valid], dtype=np.int64)
    swapped = (a > b) & (outcome != _TIE)
    outcome[swapped] = 1 - outcome[swapped]
    keys, pair = np.unique(np.minimum(a, b) * len(models) + np.maximum(a, b), return_inverse=True)
    return _Tally(
        models=models,
        voters=voters,
        first=keys // max(len(models), 1),
        second=keys % max(len(models), 1),
        voter=np.array([voter_index[vote.voter] for vote in valid], dtype=np.int64),
        pair=pair.astype(np.int64),
        outcome=outcome,
    )


def _sigmoid(x: _F64) -> _F64:
    """1 / (1 + exp(-x)) without overflow warnings (exp of a very negative number is just 0)."""
    result: _F64 = np.exp(-np.logaddexp(0.0, -x))
    return result


def _batch_size(tally: _Tally) -> int:
    """Fits per batch: depends on the votes only, so the bootstrap's draws do too."""
    return max(1, _BATCH_FLOATS // (len(tally.models) ** 2 + 3 * tally.first.size))


def _fit(first: _I64, second: _I64, cells: _F64, start: _F64) -> _F64:
    """Strengths (natural-log units) for each row of ``cells`` (rows x 3 * pairs), by Newton's
    method from ``start`` (rows x models). Rows are independent fits done together: every step
    builds each row's gradient and Hessian in n-by-n arrays and solves them in one call.
    """
    n = start.shape[1]
    wins = cells[:, _FIRST::3] + 0.5 * cells[:, _TIE::3]
    games = cells[:, _FIRST::3] + cells[:, _SECOND::3] + cells[:, _TIE::3]
    theta = start.copy()
    active = np.arange(theta.shape[0])
    diagonal = np.arange(n)
    for _ in range(_MAX_ITERATIONS):
        current = theta[active]
        p = _sigmoid(current[:, first] - current[:, second])
        pairwise = np.zeros((active.size, n, n))
        # The log-likelihood's gradient: what each pair's first model won beyond expectation.
        pairwise[:, first, second] = wins[active] - games[active] * p
        gradient = pairwise.sum(axis=2) - pairwise.sum(axis=1) - _RIDGE * current
        # Minus its Hessian: a graph Laplacian weighted by each pair's Fisher information.
        pairwise[:, first, second] = games[active] * p * (1 - p)
        pairwise += pairwise.transpose(0, 2, 1)
        information = -pairwise
        information[:, diagonal, diagonal] = pairwise.sum(axis=2) + _RIDGE
        step = np.linalg.solve(information, gradient[:, :, None])[:, :, 0]
        largest = np.abs(step).max(axis=1)
        step *= np.minimum(1.0, _MAX_STEP / np.maximum(largest, _TOLERANCE))[:, None]
        theta[active] = current + step
        active = active[largest >= _TOLERANCE]
        if active.size == 0:
            break
    return theta


def _points(theta: _F64) -> _F64:
    """Natural-log strengths to the Elo-like scale, each row centred on 1000."""
    centred: _F64 = theta - theta.mean(axis=-1, keepdims=True)
    return _CENTRE + _POINTS_PER_NAT * centred


def _strengths(tally: _Tally) -> _F64:
    start = np.zeros((1, len(tally.models)))
    theta: _F64 = _fit(tally.first, tally.second, tally.cells()[None, :], start)[0]
    return theta


def scores(votes: Sequence[Vote]) -> dict[str, float]:
    """Each model's Bradley-Terry score (mean 1000), best first."""
    tally = _tally(votes)
    if not tally.models:
        return {}
    points = _points(_strengths(tally))
    order = sorted(range(len(tally.models)), key=lambda i: (-points[i], tally.models[i]))
    return {tally.models[i]: float(points[i]) for i in order}


def leaderboard(
    votes: Sequence[Vote], *, rounds: int = 1000, confidence: float = 0.95, seed: int = 0
) -> list[Standing]:
    """The board, best first, with ``confidence`` intervals from ``rounds`` bootstrap rounds.

    The same votes and seed give the same board (numpy's ``default_rng(seed)``).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    tally = _tally(votes)
    n = len(tally.models)
    if n == 0:
        return []
    cells = tally.cells()
    theta = _strengths(tally)
    rng = np.random.default_rng(seed)
    total = int(cells.sum())
    shares = cells / total
    samples = []
    batch = _batch_size(tally)
    for done in range(0, rounds, batch):
        drawn = rng.multinomial(total, shares, size=min(batch, rounds - done)).astype(np.float64)
        start = np.broadcast_to(theta, (drawn.shape[0], n))
        samples.append(_points(_fit(tally.first, tally.second, drawn, start)))
    tail = (1 - confidence) / 2
    lower, upper = np.quantile(np.concatenate(samples), [tail, 1 - tail], axis=0)
    points = _points(theta)

    by_first = cells.reshape(-1, 3)
    wins = np.bincount(tally.first, by_first[:, _FIRST], n)
    wins += np.bincount(tally.second, by_first[:, _SECOND], n)
    losses = np.bincount(tally.first, by_first[:, _SECOND], n)
    losses += np.bincount(tally.second, by_first[:, _FIRST], n)
    ties = np.bincount(tally.first, by_first[:, _TIE], n)
    ties += np.bincount(tally.second, by_first[:, _TIE], n)
    ahead = (lower[None, :] > upper[:, None]).sum(axis=1)
    board = [
        Standing(
            rank=1 + int(ahead[i]),
            model=tally.models[i],
            score=float(points[i]),
            lower=float(lower[i]),
            upper=float(upper[i]),
            votes=int(wins[i] + losses[i] + ties[i]),
            wins=int(wins[i]),
            losses=int(losses[i]),
            ties=int(ties[i]),
        )
        for i in range(n)
    ]
    return sorted(board, key=lambda standing: (-standing.score, standing.model))


def check_voters(
    votes: Sequence[Vote], *, min_votes: int = 10, alpha: float = 0.01
) -> list[VoterCheck]:
    """Voters with at least ``min_votes`` decisive votes, most suspicious first.

    For each decisive vote, let q be the probability, under the board fitted without this voter,
    that the favoured model of the two wins. An honest voter picks it with probability q, so
    their agreements are a sum of Bernoulli(q) (Poisson-binomial); the voter's agreements are
    compared with its lower tail by a normal approximation with continuity correction, and are
    ``suspicious`` when the chance of agreeing as little is below ``alpha``. A pair the board
    rates exactly even counts as half an agreement whichever way the vote went.

    Random voters (agreement near 1/2) and voters who pick the worse model come out suspicious
    given enough votes on pairs the board can tell apart; votes on evenly matched pairs (q near
    1/2) say little either way. Ties and "both bad" are not tested, but are left out of the
    voter's own fit with the rest.
    """
    if min_votes < 1:
        raise ValueError(f"min_votes must be at least 1, not {min_votes}")
    tally = _tally(votes)
    n = len(tally.models)
    decisive = tally.outcome != _TIE
    counts = np.bincount(tally.voter[decisive], minlength=len(tally.voters))
    checked = np.flatnonzero(counts >= min_votes)
    if checked.size == 0:
        return []
    cells = tally.cells()
    theta = _strengths(tally)
    rows = np.full(len(tally.voters), -1)
    results: list[VoterCheck] = []
    batch = _batch_size(tally)
    for done in range(0, checked.size, batch):
        chunk = checked[done : done + batch]
        rows[chunk] = np.arange(chunk.size)
        row = rows[tally.voter]
        mine = row >= 0
        own = np.bincount(
            row[mine] * 3 * tally.first.size + 3 * tally.pair[mine] + tally.outcome[mine],
            minlength=chunk.size * cells.size,
        ).reshape(chunk.size, cells.size)
        fitted = _fit(
            tally.first, tally.second, cells - own, np.broadcast_to(theta, (chunk.size, n))
        )
        rows[chunk] = -1
        tested = mine & decisive
        voter, pair = row[tested], tally.pair[tested]
        p = _sigmoid(fitted[voter, tally.first[pair]] - fitted[voter, tally.second[pair]])
        q = np.maximum(p, 1 - p)
        chose_first = tally.outcome[tested] == _FIRST
        agreed = np.where(p == 0.5, 0.5, (p > 0.5) == chose_first)
        total = np.bincount(voter, minlength=chunk.size)
        agreements = np.bincount(voter, agreed, chunk.size)
        expected = np.bincount(voter, q, chunk.size)
        variance = np.bincount(voter, q * (1 - q), chunk.size)
        for k, index in enumerate(chunk):
            p_value = _lower_tail(agreements[k], expected[k], variance[k])
            results.append(
                VoterCheck(
                    voter=tally.voters[index],
                    votes=int(total[k]),
                    agreement=float(agreements[k] / total[k]),
                    expected=float(expected[k] / total[k]),
                    p_value=p_value,
                    suspicious=p_value < alpha,
                )
            )
    return sorted(results, key=lambda check: (check.p_value, check.voter))


def _lower_tail(observed: float, mean: float, variance: float) -> float:
    """P(S <= observed) for a sum S of Bernoullis with this mean and variance, approximately."""
    if variance <= 0:
        return 1.0 if observed >= mean else 0.0
    z = (observed + 0.5 - mean) / math.sqrt(variance)
    return 0.5 * math.erfc(-z / math.sqrt(2))
