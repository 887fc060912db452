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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["PRIOR_TRUST", "Label", "Trust", "estimate"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]

_DEFAULT_PRIOR: Final = (4.0, 2.0)
PRIOR_TRUST: Final = _DEFAULT_PRIOR[0] / (_DEFAULT_PRIOR[0] + _DEFAULT_PRIOR[1])


@dataclass(frozen=True)
class Label:
    rater: str
    item: str
    value: int


@dataclass(frozen=True)
class Trust:
    """``raters``: posterior mean accuracy; ``items``: P(true label is 1); ``evidence``: the
    rater's (or their group's) labels on items that another source also labelled."""

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


def _index(names: list[str]) -> tuple[dict[str, int], _I64]:
    """Each distinct name's index, by first appearance, and every name's index."""
    index: dict[str, int] = {}
    positions = [index.setdefault(name, len(index)) for name in names]
    return index, np.array(positions, dtype=np.int64)


def _collapse(labels: Iterable[Label], groups: Mapping[str, str]) -> _Sources:
    labels = list(labels)
    rater_index, raters = _index([label.rater for label in labels])
    item_index, items = _index([label.item for label in labels])
    values = np.array([label.value for label in labels], dtype=np.int64)
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
    )


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
    shared_items = sources_per_item >= 2
    shared = shared_items[data.item]
    source, item, value = data.source[shared], data.item[shared], data.value[shared]
    evidence = np.bincount(source, minlength=data.sources)
    sign = 2 * data.value - 1

    ones = np.bincount(data.item, data.value, n_items)
    posterior = np.divide(
        ones, sources_per_item, out=np.full(n_items, 0.5), where=sources_per_item > 0
    )
    accuracy = np.full(data.sources, np.inf)  # no accuracy yet: the first step never stops
    for _ in range(iterations):
        truth = posterior[item]
        correct = np.bincount(source, value * truth + (1 - value) * (1 - truth), data.sources)
        updated = (a - 1 + correct) / (a + b - 2 + evidence)
        pi = (posterior[shared_items].sum() + 1) / (shared_items.sum() + 2)
        weights = sign * _logit(updated)[data.source]
        posterior = _sigmoid(_logit(np.array(pi)) + np.bincount(data.item, weights, n_items))
        converged = bool(np.all(np.abs(updated - accuracy) < tolerance))
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
