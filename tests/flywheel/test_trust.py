"""Rater trust: accuracies learnt from agreement, the prior without evidence, and sock puppets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.flywheel.trust import PRIOR_TRUST, Label, Trust, estimate


def rate(
    accuracies: dict[str, float], truth: list[int], rng: np.random.Generator, *, share: float = 1
) -> list[Label]:
    """Each rater labels each item with probability ``share``, correctly with their accuracy."""
    labels = []
    for rater, accuracy in accuracies.items():
        for i, true in enumerate(truth):
            if rng.random() < share:
                value = true if rng.random() < accuracy else 1 - true
                labels.append(Label(rater, f"item{i}", value))
    return labels


def test_honest_raters_outrank_random_ones_who_outrank_adversaries() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 400).tolist()
    accuracies = (
        {f"honest{k}": 0.9 for k in range(8)}
        | {f"random{k}": 0.5 for k in range(4)}
        | {f"adversary{k}": 0.1 for k in range(3)}
    )
    trust = estimate(rate(accuracies, truth, rng, share=0.5))
    by_kind = {
        kind: [q for rater, q in trust.raters.items() if rater.startswith(kind)]
        for kind in ("honest", "random", "adversary")
    }
    assert min(by_kind["honest"]) > max(by_kind["random"])
    assert min(by_kind["random"]) > max(by_kind["adversary"])
    assert max(by_kind["adversary"]) < 0.5
    for kind, accuracy in (("honest", 0.9), ("random", 0.5), ("adversary", 0.1)):
        assert np.mean(by_kind[kind]) == pytest.approx(accuracy, abs=0.06)
    recovered = [trust.items[f"item{i}"] > 0.5 for i in range(len(truth))]
    assert np.mean(np.array(recovered) == np.array(truth)) > 0.95


def test_raters_without_shared_items_keep_the_prior() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, 100).tolist()
    labels = rate({"a": 0.9, "b": 0.9, "c": 0.9}, truth, rng)
    labels += [Label("loner", f"own{i}", i % 2) for i in range(30)]
    trust = estimate(labels)
    assert trust.raters["loner"] == PRIOR_TRUST
    assert trust.evidence["loner"] == 0
    assert trust.evidence["a"] == 100
    # The loner's items get a posterior all the same, leaning their way.
    assert trust.items["own1"] > 0.5 > trust.items["own0"]
    other = estimate(labels, prior=(3.0, 3.0))
    assert other.raters["loner"] == 0.5


def test_a_sock_puppet_group_counts_once_and_is_found_out() -> None:
    """Five accounts behind one address always give the wrong label, against three honest
    raters. As five independent raters they outvote the honest ones and take their trust;
    as one group they are one voice against three, and lose theirs."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 200).tolist()
    labels = rate({f"honest{k}": 0.9 for k in range(3)}, truth, rng)
    puppets = [f"puppet{k}" for k in range(5)]
    labels += [Label(p, f"item{i}", 1 - true) for p in puppets for i, true in enumerate(truth)]

    naive = estimate(labels)
    assert min(naive.raters[p] for p in puppets) > 0.9
    assert max(naive.raters[f"honest{k}"] for k in range(3)) < 0.5

    grouped = estimate(labels, groups={p: "10.0.0.7" for p in puppets})
    assert {grouped.raters[p] for p in puppets} == {grouped.raters["puppet0"]}
    assert grouped.raters["puppet0"] < 0.1
    assert min(grouped.raters[f"honest{k}"] for k in range(3)) > 0.8
    assert grouped.evidence["puppet0"] == 200  # the group's labels, one per item
    recovered = [grouped.items[f"item{i}"] > 0.5 for i in range(len(truth))]
    assert np.mean(np.array(recovered) == np.array(truth)) > 0.95


def test_a_group_cannot_confirm_itself() -> None:
    members = {f"acct{k}": "net" for k in range(5)}
    labels = [Label(m, f"item{i}", 1) for m in members for i in range(50)]
    assert estimate(labels).raters["acct0"] > 0.9  # as strangers they vouch for one another
    trust = estimate(labels, groups=members)
    assert all(trust.raters[m] == PRIOR_TRUST for m in members)
    assert all(trust.evidence[m] == 0 for m in members)


def test_a_split_group_drops_the_item_and_repeats_collapse() -> None:
    labels = [
        Label("x1", "split", 1),
        Label("x2", "split", 0),
        Label("honest", "split", 1),
        Label("x1", "agreed", 1),
        Label("x2", "agreed", 1),
        Label("honest", "agreed", 1),
        Label("repeater", "agreed", 1),
        Label("repeater", "agreed", 1),
        Label("repeater", "alone", 1),
        Label("repeater", "alone", 1),
    ]
    trust = estimate(labels, groups={"x1": "g", "x2": "g"})
    assert trust.evidence == {"x1": 1, "x2": 1, "honest": 1, "repeater": 1}
    assert trust.items["split"] > 0.5  # only the honest rater's label is left on it


def votes(voter: str, firsts: list[int], pool: str = "pair:x|y") -> list[Label]:
    """One side-by-side vote a comparison, each its own item in the pair's pool."""
    return [Label(voter, f"{voter}-{k}", first, pool) for k, first in enumerate(firsts)]


def test_each_vote_against_the_other_voters_on_a_pair_counts() -> None:
    """As one label per pair, eleven votes against everyone were one wrong label: trust 0.57,
    above the 0.5 threshold, with evidence 1. Each vote is a label now."""
    labels = votes("h1", [1] * 6) + votes("h2", [1] * 6) + votes("contrary", [0] * 11)
    trust = estimate(labels)
    assert trust.evidence == {"h1": 6, "h2": 6, "contrary": 11}
    assert trust.raters["contrary"] < 0.3
    assert trust.raters["h1"] == trust.raters["h2"] > 0.8
    assert trust.items["contrary-0"] > 0.9  # the first model was the better one after all
    # A voter who outvotes everyone else put together still cannot vouch for themselves.
    prolific = estimate(votes("h1", [1] * 6) + votes("h2", [1] * 6) + votes("spam", [0] * 40))
    assert prolific.raters["spam"] < 0.2 and prolific.raters["h1"] > 0.8


def test_honest_voters_keep_their_trust_on_a_close_pair() -> None:
    """Honest voters pick the weaker model of two now and then; on a pair the others find
    evenly matched, a vote either way says little about the voter."""
    rng = np.random.default_rng(4)
    close = [vote for k in range(20) for vote in votes(f"h{k}", (rng.random(20) < 0.55).tolist())]
    trust = estimate(close + votes("contrary", [0] * 20))
    assert min(trust.raters[f"h{k}"] for k in range(20)) > 0.65
    assert trust.raters["contrary"] > 0.65  # undetectable here, as for the leaderboard's check
    lopsided = [vote for k in range(20) for vote in votes(f"h{k}", (rng.random(20) < 0.8).tolist())]
    trust = estimate(lopsided + votes("contrary", [0] * 20))
    assert min(trust.raters[f"h{k}"] for k in range(20)) > 0.65
    assert trust.raters["contrary"] < 0.3


def test_a_lone_voter_on_a_pair_and_a_group_of_voters_keep_the_prior() -> None:
    alone = estimate(votes("solo", [0] * 10) + votes("other", [1] * 10, pool="pair:y|z"))
    assert alone.raters["solo"] == alone.raters["other"] == PRIOR_TRUST
    assert alone.evidence["solo"] == 0
    members = {f"acct{k}": "net" for k in range(3)}
    grouped = estimate([vote for m in members for vote in votes(m, [1] * 10)], groups=members)
    assert all(grouped.raters[m] == PRIOR_TRUST for m in members)


def test_empty_input_and_bad_arguments() -> None:
    assert estimate([]) == Trust({}, {}, {})
    with pytest.raises(ValueError, match="0 or 1"):
        estimate([Label("r", "i", 2)])
    with pytest.raises(ValueError, match="prior"):
        estimate([], prior=(1.0, 2.0))
    with pytest.raises(ValueError, match="iterations"):
        estimate([], iterations=0)
    with pytest.raises(ValueError, match="one source labels it"):
        estimate([Label("r", "c", 1, "pair"), Label("s", "c", 1, "pair")])
    with pytest.raises(ValueError, match="two pools"):
        estimate([Label("r", "c", 1, "pair"), Label("r", "c", 1)])


labels_strategy = st.lists(
    st.builds(
        Label,
        rater=st.sampled_from([f"r{k}" for k in range(6)]),
        item=st.sampled_from([f"i{k}" for k in range(8)]),
        value=st.integers(0, 1),
    ),
    max_size=60,
)
votes_strategy = st.lists(
    st.tuples(
        st.sampled_from([f"r{k}" for k in range(6)]),
        st.sampled_from(["pair:a|b", "pair:a|c"]),
        st.integers(0, 1),
    ),
    max_size=40,
).map(lambda drawn: [Label(r, f"vote{k}", v, pool) for k, (r, pool, v) in enumerate(drawn)])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(labels_strategy, votes_strategy, st.booleans())
def test_trust_is_a_probability_and_ignores_which_value_is_called_1(
    labels: list[Label], pooled: list[Label], grouped: bool
) -> None:
    labels = labels + pooled
    groups = {"r0": "g", "r1": "g", "r2": "h"} if grouped else None
    trust = estimate(labels, groups=groups)
    flipped = estimate([Label(x.rater, x.item, 1 - x.value, x.pool) for x in labels], groups=groups)
    assert set(trust.raters) == {x.rater for x in labels}
    assert set(trust.items) == {x.item for x in labels}
    for rater, q in trust.raters.items():
        assert 0 < q < 1
        assert flipped.raters[rater] == pytest.approx(q, abs=1e-9)
        assert flipped.evidence[rater] == trust.evidence[rater]
    for item, p in trust.items.items():
        assert 0 <= p <= 1
        assert flipped.items[item] == pytest.approx(1 - p, abs=1e-9)
