"""How far to trust each rater's labels, learnt from how they agree with one another.

Raters give binary labels to items: thumbs up or down on an answer, or which of two models won.
Nobody knows the true labels, but raters who label the same items reveal one another: one who
usually agrees with the consensus is probably right, and the consensus is built by weighting
each rater by that accuracy. ``estimate`` fits the one-coin Dawid-Skene model by EM:

- each rater r has one accuracy q_r, the probability that their label equals the item's truth
  (whichever it is; q_r < 1/2 for a rater who labels against the truth on purpose);
- items are 1 with probability pi (learnt), and raters label independently given the truth;
- E-step: each item's posterior P(truth = 1) from pi and the accuracies of its raters;
- M-step: q_r = (a - 1 + expected correct) / (a + b - 2 + n_r), the MAP under a Beta(a, b)
  prior (hence a, b > 1), and pi the mean posterior of the shared items (with one pseudo-item
  of each class, so that it never reaches 0 or 1).

Item posteriors start from the share of 1s among each item's labels (majority vote), and the
iterations stop when no accuracy moves by ``tolerance`` any more. A rater's reported trust is
the posterior mean (a + expected correct) / (a + b + n_r), which stays inside (0, 1).

Evidence
    Only items labelled by at least two independent sources say anything about accuracy: a lone
    label agrees with the posterior it creates. So accuracies are learnt from *shared* items
    only (and so is pi, which single-rater labels could otherwise drag), and a rater with no
    label on a shared item keeps the prior: trust ``a / (a + b)`` (``PRIOR_TRUST`` for the
    default prior) and evidence 0. Single-rater items still get a posterior, from that rater's
    accuracy.

Groups (the sock-puppet defence)
    ``groups`` maps raters to a group, such as the accounts behind one network address. Each
    group is one source: its members' labels on an item collapse to one label, their majority
    (an even split drops the item for the group), and the group has one accuracy, which every
    member reports, with the group's evidence. Hence a group can never confirm itself: an item
    labelled only within one group is a single-source item, and five accounts agreeing count as
    one rater, not five. A rater outside any group is a source of their own, so their repeated
    labels on one item also collapse to one.

Pools (side-by-side votes)
    A side-by-side vote is a label on its own item, the comparison (which of its two answers was
    better), and nobody else labels that item: on its own it says nothing about the voter. What
    the other voters said about the same two models does: a label may name a ``pool`` (the model
    pair), and an item in a pool takes, in place of pi, a prior learnt from the *other* sources'
    items in the pool: (their summed posteriors + 1) / (their number + 2), so that a source
    never vouches for itself (as ``leaderboard.check_voters`` fits the board without the voter).
    The model is the one above with a class prior per pool: each vote is one label, so a voter
    who voted against everyone else on a pair ten times is wrong ten times, not once, and a
    voter's evidence counts their labels in pools another source labelled too. Votes on a pair
    the others find evenly matched (a prior near 1/2) move the voter's accuracy little either
    way; an honest voter who sometimes prefers the weaker model keeps their trust. Each item in
    a pool is labelled by one source (a comparison is one voter's); pooled items start from
    the pool's prior made of the other sources' labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["PRIOR_TRUST", "Label", "Trust", "estimate"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
K = TypeVar("K", str, str | None)

_DEFAULT_PRIOR: Final = (4.0, 2.0)
PRIOR_TRUST: Final = _DEFAULT_PRIOR[0] / (_DEFAULT_PRIOR[0] + _DEFAULT_PRIOR[1])


@dataclass(frozen=True)
class Label:
    """``rater`` says ``item`` is ``value`` (0 or 1); items of one ``pool`` (a model pair's
    comparisons) are judged against the other sources' items in it."""

    rater: str
    item: str
    value: int
    pool: str | None = None


@dataclass(frozen=True)
class Trust:
    """``raters``: posterior mean accuracy; ``items``: P(true label is 1); ``evidence``: the
    rater's (or their group's) labels on items that another source also labelled, or in pools
    that another source also labelled in."""

    raters: dict[str, float]
    items: dict[str, float]
    evidence: dict[str, int]


def _sigmoid(x: _F64) -> _F64:
    result: _F64 = np.exp(-np.logaddexp(0.0, -x))
    return result


def _logit(p: _F64) -> _F64:
    result: _F64 = np.log(p) - np.log1p(-p)
    return result


@dataclass(frozen=True)
class _Sources:
    """Labels collapsed to one per (source, item), as indices."""

    raters: list[str]
    items: list[str]
    source_of_rater: _I64
    sources: int
    source: _I64
    item: _I64
    value: _F64
    pool_of_item: _I64  # -1: in no pool


def _index(names: list[K]) -> tuple[dict[K, int], _I64]:
    """Each distinct name's index, by first appearance, and every name's index."""
    index: dict[K, int] = {}
    positions = [index.setdefault(name, len(index)) for name in names]
    return index, np.array(positions, dtype=np.int64)


def _collapse(labels: Iterable[Label], groups: Mapping[str, str]) -> _Sources:
    labels = list(labels)
    rater_index, raters = _index([label.rater for label in labels])
    item_index, items = _index([label.item for label in labels])
    values = np.array([label.value for label in labels], dtype=np.int64)
    pool_names, pools = _index([label.pool for label in labels])
    pools = np.where(pool_names.get(None, -1) == pools, -1, pools)  # -1: in no pool
    pool_of_item = np.full(len(item_index), -1, dtype=np.int64)
    pool_of_item[items] = pools
    mixed = np.flatnonzero(pool_of_item[items] != pools)
    if mixed.size:
        raise ValueError(f"item {labels[mixed[0]].item!r} is labelled in two pools (or in none)")
    wrong = np.flatnonzero((values != 0) & (values != 1))
    if wrong.size:
        label = labels[wrong[0]]
        raise ValueError(f"a label is 0 or 1, not {label.value!r} (rater {label.rater!r})")
    # Group names and rater names live apart: a group called "alice" is not the rater alice.
    source_index: dict[tuple[bool, str], int] = {}
    source_of_rater = np.array(
        [
            source_index.setdefault(
                (True, groups[rater]) if rater in groups else (False, rater), len(source_index)
            )
            for rater in rater_index
        ],
        dtype=np.int64,
    )
    n_items = len(item_index)
    keys, inverse = np.unique(
        source_of_rater[raters] * n_items + items,
        return_inverse=True,
    )
    ones = np.bincount(inverse, values, keys.size)
    total = np.bincount(inverse, minlength=keys.size)
    kept = 2 * ones != total
    return _Sources(
        raters=list(rater_index),
        items=list(item_index),
        source_of_rater=source_of_rater,
        sources=len(source_index),
        source=keys[kept] // max(n_items, 1),
        item=keys[kept] % max(n_items, 1),
        value=(2 * ones[kept] > total[kept]).astype(np.float64),
        pool_of_item=pool_of_item,
    )


class _Pools:
    """The labels on pooled items, and for each the prior its pool gives it."""

    def __init__(self, data: _Sources) -> None:
        pool = data.pool_of_item[data.item]
        self.labels = np.flatnonzero(pool >= 0)
        self.items = data.item[self.labels]
        self.source = data.source[self.labels]
        self.value = data.value[self.labels]
        self.pool = pool[self.labels]
        self.n_pools = int(self.pool.max(initial=-1)) + 1
        _, self.cell = np.unique(self.pool * data.sources + self.source, return_inverse=True)
        self.others = (
            np.bincount(self.pool, minlength=self.n_pools)[self.pool]
            - np.bincount(self.cell, minlength=self.cell.size)[self.cell]
        )

    def prior(self, accuracy: _F64) -> _F64:
        """For each pooled label, P(its item is 1) from the other sources' labels in its pool,
        each read through its source's accuracy alone: (their sum + 1) / (their number + 2)."""
        q = accuracy[self.source]
        says = self.value * q + (1 - self.value) * (1 - q)
        in_pool = np.bincount(self.pool, says, self.n_pools)[self.pool]
        own = np.bincount(self.cell, says, self.cell.size)[self.cell]
        result: _F64 = (in_pool - own + 1) / (self.others + 2)
        return result

    def posterior(self, accuracy: _F64) -> _F64:
        """P(each pooled label's item is 1): its pool's prior and its own label."""
        sign = 2 * self.value - 1
        return _sigmoid(_logit(self.prior(accuracy)) + sign * _logit(accuracy[self.source]))


def estimate(
    labels: Iterable[Label],
    *,
    groups: Mapping[str, str] | None = None,
    prior: tuple[float, float] = _DEFAULT_PRIOR,
    iterations: int = 100,
    tolerance: float = 1e-6,
) -> Trust:
    """Every rater's trust and every item's posterior; see the module docstring."""
    a, b = prior
    if not (a > 1 and b > 1):
        raise ValueError(f"the prior's a and b must both exceed 1, not {prior}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    data = _collapse(labels, groups or {})
    n_items = len(data.items)
    sources_per_item = np.bincount(data.item, minlength=n_items)
    pooled_items = data.pool_of_item >= 0
    crowded = np.flatnonzero(pooled_items & (sources_per_item > 1))
    if crowded.size:
        raise ValueError(f"item {data.items[crowded[0]]!r} is in a pool: one source labels it")
    pools = _Pools(data)
    shared_items = (sources_per_item >= 2) & ~pooled_items  # pi is learnt from these
    shared = shared_items[data.item]
    shared[pools.labels] = pools.others > 0
    source, item, value = data.source[shared], data.item[shared], data.value[shared]
    evidence = np.bincount(source, minlength=data.sources)
    sign = 2 * data.value - 1

    ones = np.bincount(data.item, data.value, n_items)
    posterior = np.divide(
        ones, sources_per_item, out=np.full(n_items, 0.5), where=sources_per_item > 0
    )
    accuracy = np.full(data.sources, (a - 1) / (a + b - 2))  # the prior's mode, to start
    posterior[pools.items] = pools.posterior(accuracy)
    for step in range(iterations):
        truth = posterior[item]
        correct = np.bincount(source, value * truth + (1 - value) * (1 - truth), data.sources)
        updated = (a - 1 + correct) / (a + b - 2 + evidence)
        pi = (posterior[shared_items].sum() + 1) / (shared_items.sum() + 2)
        weights = sign * _logit(updated)[data.source]
        posterior = _sigmoid(_logit(np.array(pi)) + np.bincount(data.item, weights, n_items))
        posterior[pools.items] = pools.posterior(updated)
        converged = step > 0 and bool(np.all(np.abs(updated - accuracy) < tolerance))
        accuracy = updated
        if converged:
            break
    trust = (a + correct) / (a + b + evidence)
    return Trust(
        raters={
            rater: float(trust[data.source_of_rater[i]]) for i, rater in enumerate(data.raters)
        },
        items={name: float(posterior[i]) for i, name in enumerate(data.items)},
        evidence={
            rater: int(evidence[data.source_of_rater[i]]) for i, rater in enumerate(data.raters)
        },
    )
