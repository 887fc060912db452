"""The arena leaderboard: Bradley-Terry scores, bootstrap intervals, ranks and bad-voter checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.flywheel.leaderboard import (
    Outcome,
    Standing,
    Vote,
    check_voters,
    leaderboard,
    scores,
)

POINTS_PER_NAT = 400 / math.log(10)
SWAPPED: dict[Outcome, Outcome] = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}


def simulate(
    strengths: dict[str, float],
    n: int,
    rng: np.random.Generator,
    *,
    voters: int = 100,
    ties: float = 0.0,
) -> list[Vote]:
    """``n`` votes on random pairs by honest voters, from Bradley-Terry strengths in points."""
    models = list(strengths)
    value = np.array([strengths[m] for m in models])
    a = rng.integers(0, len(models), n)
    b = (a + rng.integers(1, len(models), n)) % len(models)
    p_a = 1 / (1 + 10 ** ((value[b] - value[a]) / 400))
    a_wins = rng.random(n) < p_a
    tied = rng.random(n) < ties
    return [
        Vote(
            voter=f"v{rng.integers(voters)}",
            a=models[i],
            b=models[j],
            winner="tie" if tie else ("a" if win else "b"),
        )
        for i, j, win, tie in zip(
            a.tolist(), b.tolist(), a_wins.tolist(), tied.tolist(), strict=True
        )
    ]


def centred(strengths: dict[str, float]) -> dict[str, float]:
    mean = sum(strengths.values()) / len(strengths)
    return {model: 1000 + s - mean for model, s in strengths.items()}


STRENGTHS = {"m0": 1200.0, "m1": 1120.0, "m2": 1060.0, "m3": 1000.0, "m4": 950.0, "m5": 870.0}


def test_recovers_the_true_order_and_scores() -> None:
    votes = simulate(STRENGTHS, 30_000, np.random.default_rng(1))
    fitted = scores(votes)
    assert list(fitted) == list(STRENGTHS)  # best first
    truth = centred(STRENGTHS)
    for model, score in fitted.items():
        assert score == pytest.approx(truth[model], abs=15)


def test_the_fit_is_the_maximum_likelihood_one() -> None:
    """At the MLE each model's expected wins, summed over its votes, equal its actual wins
    (ties as halves); the ridge moves that by a few hundredths of a win at most."""
    votes = simulate(STRENGTHS, 5_000, np.random.default_rng(12), ties=0.2)
    fitted = scores(votes)
    actual = dict.fromkeys(fitted, 0.0)
    expected = dict.fromkeys(fitted, 0.0)
    half: dict[Outcome, float] = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
    for vote in votes:
        p_a = 1 / (1 + 10 ** ((fitted[vote.b] - fitted[vote.a]) / 400))
        actual[vote.a] += half[vote.winner]
        actual[vote.b] += 1 - half[vote.winner]
        expected[vote.a] += p_a
        expected[vote.b] += 1 - p_a
    for model in fitted:
        assert expected[model] == pytest.approx(actual[model], abs=0.05)


def test_two_models_match_the_closed_form() -> None:
    """A beats B 30 times in 40: the odds are 3, so A leads by 400 * log10(3) points."""
    votes = [Vote("u", "A", "B", "a")] * 30 + [Vote("u", "A", "B", "b")] * 10
    fitted = scores(votes)
    assert fitted["A"] - fitted["B"] == pytest.approx(400 * math.log10(3), abs=0.5)
    assert fitted["A"] + fitted["B"] == pytest.approx(2000)


def test_ties_and_both_bad_count_half_a_win_each_way() -> None:
    votes = [Vote("u", "A", "B", "a")] * 6 + [Vote("u", "A", "B", "tie")] * 4
    both_bad = [Vote("u", "A", "B", "a")] * 6 + [Vote("u", "A", "B", "both_bad")] * 4
    # 6 + 2 wins against 2: odds of 4.
    assert scores(votes)["A"] - scores(votes)["B"] == pytest.approx(400 * math.log10(4), abs=1)
    assert scores(both_bad) == scores(votes)
    a, b = leaderboard(votes, rounds=20)
    assert (a.model, a.wins, a.losses, a.ties, a.votes) == ("A", 6, 0, 4, 10)
    assert (b.model, b.wins, b.losses, b.ties, b.votes) == ("B", 0, 6, 4, 10)


votes_strategy = st.lists(
    st.builds(
        Vote,
        voter=st.sampled_from(["u1", "u2", "u3"]),
        a=st.sampled_from(["w", "x", "y", "z"]),
        b=st.sampled_from(["w", "x", "y", "z"]),
        winner=st.sampled_from(["a", "b", "tie", "both_bad"]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(votes_strategy)
def test_swapping_sides_changes_nothing(votes: list[Vote]) -> None:
    swapped = [Vote(v.voter, v.b, v.a, SWAPPED[v.winner]) for v in votes]
    original, mirrored = scores(votes), scores(swapped)
    assert original.keys() == mirrored.keys()
    for model, score in original.items():
        assert mirrored[model] == pytest.approx(score, abs=1e-6)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(votes_strategy)
def test_scores_are_finite_and_average_1000(votes: list[Vote]) -> None:
    fitted = scores(votes)
    assert set(fitted) == {m for v in votes if v.a != v.b for m in (v.a, v.b)}
    if fitted:
        assert all(math.isfinite(s) for s in fitted.values())
        assert sum(fitted.values()) / len(fitted) == pytest.approx(1000, abs=1e-9)
        assert list(fitted.values()) == sorted(fitted.values(), reverse=True)


def test_intervals_hold_the_estimate_and_narrow_with_more_votes() -> None:
    rng = np.random.default_rng(2)
    small = leaderboard(simulate(STRENGTHS, 2_000, rng), rounds=300)
    large = leaderboard(simulate(STRENGTHS, 20_000, rng), rounds=300)
    for board in (small, large):
        assert sum(s.score for s in board) / len(board) == pytest.approx(1000)
        for standing in board:
            assert standing.lower <= standing.score <= standing.upper
    width = {s.model: s.upper - s.lower for s in small}
    for standing in large:
        # Ten times the votes: about sqrt(10) ~ 3.2 times narrower.
        assert standing.upper - standing.lower < width[standing.model] / 2


def test_bootstrap_intervals_cover_the_true_scores() -> None:
    rng = np.random.default_rng(3)
    truth = centred(STRENGTHS)
    covered = checked = 0
    for seed in range(40):
        board = leaderboard(simulate(STRENGTHS, 1_500, rng), rounds=200, seed=seed)
        covered += sum(s.lower <= truth[s.model] <= s.upper for s in board)
        checked += len(board)
    assert covered / checked >= 0.85


def test_a_model_that_never_loses_gets_a_finite_top_score() -> None:
    votes = simulate(STRENGTHS, 3_000, np.random.default_rng(4))
    votes += [Vote("u", "champion", model, "a") for model in STRENGTHS for _ in range(5)]
    board = leaderboard(votes, rounds=200)
    top = board[0]
    assert top.model == "champion"
    assert (top.rank, top.losses, top.wins) == (1, 0, 30)
    assert all(math.isfinite(x) for x in (top.score, top.lower, top.upper))
    assert top.score > board[1].score


def test_ranks_follow_arenas_rule() -> None:
    votes = simulate(
        {"top": 1300.0, "twin1": 1100.0, "twin2": 1100.0, "low": 900.0},
        8_000,
        np.random.default_rng(5),
    )
    board = leaderboard(votes, rounds=300)
    for standing in board:
        above = sum(other.lower > standing.upper for other in board)
        assert standing.rank == 1 + above
    rank = {s.model: s.rank for s in board}
    assert rank == {"top": 1, "twin1": 2, "twin2": 2, "low": 4}


def test_the_same_seed_gives_the_same_board() -> None:
    votes = simulate(STRENGTHS, 1_000, np.random.default_rng(6))
    assert leaderboard(votes, rounds=100, seed=7) == leaderboard(votes, rounds=100, seed=7)
    assert leaderboard(votes, rounds=100, seed=7) != leaderboard(votes, rounds=100, seed=8)


def test_empty_and_degenerate_input() -> None:
    assert scores([]) == {}
    assert leaderboard([]) == []
    assert check_voters([]) == []
    only_self = [Vote("u", "A", "A", "a")] * 5
    assert scores(only_self) == {}
    assert leaderboard(only_self) == []
    assert leaderboard([Vote("u", "A", "B", "tie")], rounds=10) == [
        Standing(1, "A", 1000.0, 1000.0, 1000.0, 1, 0, 0, 1),
        Standing(1, "B", 1000.0, 1000.0, 1000.0, 1, 0, 0, 1),
    ]


def test_votes_for_a_model_against_itself_are_ignored() -> None:
    votes = simulate(STRENGTHS, 500, np.random.default_rng(8))
    noisy = votes + [Vote("u", "m5", "m5", "a")] * 50
    assert leaderboard(noisy, rounds=50) == leaderboard(votes, rounds=50)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        scores([Vote("u", "A", "B", "draw")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rounds"):
        leaderboard([], rounds=0)
    with pytest.raises(ValueError, match="confidence"):
        leaderboard([], confidence=1.0)
    with pytest.raises(ValueError, match="min_votes"):
        check_voters([], min_votes=0)


def test_random_and_contrary_voters_are_flagged_and_honest_ones_are_not() -> None:
    rng = np.random.default_rng(9)
    strengths = {f"m{i}": 1300.0 - 60 * i for i in range(8)}
    votes = simulate(strengths, 12_000, rng, voters=120, ties=0.1)
    pairs = simulate(strengths, 600, rng)
    for k in range(3):
        for vote in pairs[k * 100 : (k + 1) * 100]:
            guess: Outcome = "a" if rng.random() < 0.5 else "b"
            votes.append(Vote(f"random{k}", vote.a, vote.b, guess))
        for vote in pairs[300 + k * 100 : 300 + (k + 1) * 100]:
            worse: Outcome = "a" if strengths[vote.a] < strengths[vote.b] else "b"
            votes.append(Vote(f"contrary{k}", vote.a, vote.b, worse))
    checks = {c.voter: c for c in check_voters(votes)}
    assert len(checks) == 126  # every voter here has at least 10 decisive votes
    for k in range(3):
        assert checks[f"random{k}"].suspicious
        assert checks[f"contrary{k}"].suspicious
        assert checks[f"contrary{k}"].agreement == 0.0
    honest = [c for name, c in checks.items() if name.startswith("v")]
    assert sum(c.suspicious for c in honest) <= 2
    for check in honest:
        assert check.agreement == pytest.approx(check.expected, abs=0.25)
        assert 0.5 <= check.expected <= 1


def test_voter_checks_are_sorted_and_leave_out_light_voters() -> None:
    votes = simulate(STRENGTHS, 400, np.random.default_rng(10), voters=20)
    votes += [Vote("newcomer", "m0", "m1", "a")] * 3
    checks = check_voters(votes, min_votes=10)
    assert "newcomer" not in {c.voter for c in checks}
    assert [c.p_value for c in checks] == sorted(c.p_value for c in checks)
    assert all(c.votes >= 10 and 0 <= c.p_value <= 1 for c in checks)


def test_a_prolific_liar_cannot_vouch_for_themselves() -> None:
    """Half the votes come from one voter who always picks the worse model: fitted with their
    own votes the board would half agree with them; left out, it exposes them."""
    rng = np.random.default_rng(11)
    votes = simulate(STRENGTHS, 2_000, rng, voters=40)
    votes += [
        Vote("liar", v.a, v.b, "b" if STRENGTHS[v.a] > STRENGTHS[v.b] else "a")
        for v in simulate(STRENGTHS, 2_000, rng)
    ]
    liar = next(c for c in check_voters(votes) if c.voter == "liar")
    assert liar.suspicious
    assert liar.agreement < 0.05
