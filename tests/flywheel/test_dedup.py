"""The export's near-duplicate detection: verdicts, their rules, and the estimate's quality."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamplighter.flywheel.dedup import Context, Deduplicator, _KeyTable


def _words(rng: random.Random, n: int) -> list[str]:
    """``n`` made-up words, almost surely all different."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(4, 9))) for _ in range(n)]


def _edit(rng: random.Random, words: list[str], changes: int) -> list[str]:
    edited = list(words)
    for i in rng.sample(range(len(edited)), changes):
        edited[i] = _words(rng, 1)[0]
    return edited


def _bigram_jaccard(a: list[str], b: list[str]) -> float:
    """The similarity the deduplicator estimates for texts of 8 words or more."""
    x, y = set(pairwise(a)), set(pairwise(b))
    return len(x & y) / len(x | y)


def test_exact_repeats_after_case_and_whitespace_are_duplicates() -> None:
    d = Deduplicator()
    text = "Explain how a heat pump moves heat from a cold place to a warm one, step by step."
    assert d.check(text) == "keep"
    variants = [
        text,
        text.upper(),
        "  " + text.replace(" ", " \t ") + "\n",
        text.replace("a heat pump", "A  HEAT\nPUMP"),
    ]
    assert [d.check(variant) for variant in variants] == ["duplicate"] * len(variants)
    assert d.counts == {"keep": 1, "duplicate": 4, "near_duplicate": 0, "over_frequent": 0}


def test_a_few_changed_words_in_a_60_word_prompt_make_a_near_duplicate() -> None:
    rng = random.Random(7)
    d = Deduplicator()
    bases = [_words(rng, 60) for _ in range(100)]
    for base in bases:
        assert d.check(" ".join(base)) == "keep"
    one = [d.check(" ".join(_edit(rng, base, 1))) for base in bases]
    two = [d.check(" ".join(_edit(rng, base, 2))) for base in bases]
    # Word bigrams: one change leaves J = 0.93 (flagged 99.9% of the time), two J = 0.87 (95%).
    assert one.count("near_duplicate") >= 99
    assert two.count("near_duplicate") >= 90
    assert set(one + two) <= {"near_duplicate", "keep"}


def test_appended_and_trimmed_words_make_a_near_duplicate() -> None:
    d = Deduplicator()
    base = _words(random.Random(3), 60)
    assert d.check(" ".join(base)) == "keep"
    assert d.check(" ".join([*base, "thanks"])) == "near_duplicate"
    assert d.check(" ".join(base[2:])) == "near_duplicate"


def test_different_prompts_sharing_boilerplate_are_kept() -> None:
    rng = random.Random(11)
    boilerplate = (
        "You are a helpful assistant. Summarise the following customer review in three short "
        "bullet points, keeping the tone neutral:"
    )
    d = Deduplicator()
    verdicts = [d.check(f"{boilerplate} {' '.join(_words(rng, 30))}") for _ in range(200)]
    assert verdicts == ["keep"] * 200


def test_short_texts() -> None:
    d = Deduplicator()
    assert d.check("") == "keep"
    assert d.check("   \n") == "duplicate"
    assert d.check("hi") == "keep"
    assert d.check("Hi") == "duplicate"
    assert d.check("hello") == "keep"
    assert d.check("ok") == "keep"
    assert d.check("\ud800 a lone surrogate, as JSON allows") == "keep"
    assert d.check("猫は好きですか") == "keep"
    assert d.check("犬は好きですか") == "keep"
    assert d.check("What is the capital of France") == "keep"
    assert d.check("what is the capital of france?") == "near_duplicate"
    assert d.check("What is the capital of Spain") == "keep"


def test_the_cap_on_prompts_that_differ_only_in_numbers() -> None:
    rng = random.Random(5)
    d = Deduplicator(max_per_prompt=5)
    # Far apart by the threshold (the numbers are most of the words) but one skeleton.
    tickets = [
        "ticket " + " ".join(str(rng.randrange(10**8)) for _ in range(12)) for _ in range(12)
    ]
    verdicts = [d.check(ticket) for ticket in tickets]
    assert verdicts == ["keep"] * 5 + ["over_frequent"] * 7
    assert d.check(tickets[7]) == "duplicate"
    # An over-frequent text was never kept, so a variant of it with new words is kept.
    assert d.check(tickets[7] + " urgent") == "keep"
    assert d.check("ticket " + "1" * 40) == "over_frequent"


def test_only_kept_texts_count_against_the_cap() -> None:
    d = Deduplicator(max_per_prompt=2)
    base = " ".join(_words(random.Random(9), 40))
    assert d.check(base + " 1") == "keep"
    assert d.check(base + " 1") == "duplicate"
    assert d.check(base + " 2") == "near_duplicate"
    assert d.check("hello 1") == "keep"
    assert d.check("hello 2") == "keep"
    assert d.check("hello, 3!") == "over_frequent"


def test_a_prompt_is_its_text_after_the_turns_before_it() -> None:
    """The same follow-up after different conversations is a different prompt."""
    d = Deduplicator()
    more = "Can you tell me more about that"
    whales = Context().then("user: Tell me about whales").then("assistant: They are mammals.")
    tides = Context().then("user: Tell me about tides").then("assistant: The moon pulls them.")
    assert [d.check(more, whales), d.check(more, tides), d.check(more)] == ["keep"] * 3
    again = Context().then("USER: tell me about  whales").then("assistant: they are mammals.")
    assert d.check(more.upper(), again) == "duplicate"
    # Near duplicates are looked for after the same turns only, so that a long context shared
    # (a system prompt, a pasted text, the conversation's own earlier prompt) makes none.
    assert d.check(more + "?", whales) == "near_duplicate"
    assert d.check(more + "?", Context().then("user: Tell me about storms")) == "keep"
    assert Context().then("a").then("b") != Context().then("b").then("a")


def test_the_cap_counts_the_skeletons_of_whole_prompts() -> None:
    rng = random.Random(5)
    d = Deduplicator(max_per_prompt=5)
    tickets = ["ticket " + " ".join(str(rng.randrange(10**8)) for _ in range(12)) for _ in range(7)]
    orders = Context().then("system: You look orders up by number.")
    assert [d.check(ticket, orders) for ticket in tickets[:6]] == ["keep"] * 5 + ["over_frequent"]
    assert d.check(tickets[5]) == "keep"  # without the context: another skeleton
    # Contexts that differ only in numbers and punctuation share a skeleton.
    assert d.check(tickets[6], Context().then("system: You look orders up by number 2")) == (
        "over_frequent"
    )


def _mixed_prompts() -> list[str]:
    rng = random.Random(13)
    bases = [_words(rng, rng.randint(3, 70)) for _ in range(300)]
    prompts = [" ".join(words) for words in bases]
    prompts += [" ".join(_edit(rng, words, 1)) for words in bases if len(words) > 1]
    prompts += [p.upper() for p in prompts[:50]] + [f"order {n}?" for n in range(40)]
    rng.shuffle(prompts)
    return prompts


def test_verdicts_are_deterministic() -> None:
    prompts = _mixed_prompts()
    a, b = Deduplicator(), Deduplicator()
    verdicts = [a.check(p) for p in prompts]
    assert verdicts == [b.check(p) for p in prompts]
    assert set(verdicts) == {"keep", "duplicate", "near_duplicate", "over_frequent"}


def test_verdicts_do_not_depend_on_the_process() -> None:
    """No per-process salt (such as str hashing's) reaches a verdict."""
    prompts = _mixed_prompts()
    script = (
        "import json, sys\n"
        "from lamplighter.flywheel.dedup import Deduplicator\n"
        "d = Deduplicator()\n"
        "print(json.dumps([d.check(p) for p in json.load(sys.stdin)]))\n"
    )
    d = Deduplicator()
    expected = [d.check(p) for p in prompts]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(prompts),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert json.loads(result.stdout) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=400), max_size=30), st.integers(1, 3))
def test_any_text_gets_a_verdict(texts: list[str], cap: int) -> None:
    d = Deduplicator(max_per_prompt=cap)
    seen: set[str] = set()
    for i, text in enumerate(texts):
        verdict = d.check(text)
        normalised = " ".join(text.casefold().split())
        if i == 0:
            assert verdict == "keep"
        assert (verdict == "duplicate") == (normalised in seen)
        seen.add(normalised)
    assert sum(d.counts.values()) == len(texts)


@given(st.text(max_size=2000))
def test_the_first_text_is_kept_and_its_repeat_is_a_duplicate(text: str) -> None:
    d = Deduplicator()
    assert d.check(text) == "keep"
    assert d.check(text) == "duplicate"
    assert d.check(f" {text.upper()} ") in {"duplicate", "near_duplicate", "keep"}


def test_verdicts_separate_similar_pairs_from_dissimilar_ones() -> None:
    """For pairs of known similarity, J >= 0.9 is flagged and J <= 0.5 is not, 98% of the time."""
    rng = random.Random(17)
    similar: list[tuple[list[str], list[str]]] = []
    dissimilar: list[tuple[list[str], list[str]]] = []
    while len(similar) < 100 or len(dissimilar) < 100:
        a = _words(rng, rng.randint(30, 120))
        b = _edit(rng, a, rng.randint(1, len(a) // 4))
        if rng.random() < 0.5:
            b = b[rng.randint(0, 3) :]
        similarity = _bigram_jaccard(a, b)
        if similarity >= 0.9 and len(similar) < 100:
            similar.append((a, b))
        elif similarity <= 0.5 and len(dissimilar) < 100:
            dissimilar.append((a, b))
    right = 0
    for pairs, expected in ((similar, "near_duplicate"), (dissimilar, "keep")):
        for a, b in pairs:
            d = Deduplicator()
            d.check(" ".join(a))
            right += d.check(" ".join(b)) == expected
    assert right >= 196


def test_lsh_shape_follows_the_threshold() -> None:
    assert (Deduplicator().bands, Deduplicator().rows) == (10, 10)
    loose, strict = Deduplicator(threshold=0.5), Deduplicator(threshold=0.95)
    assert loose.rows < 10 < strict.rows


@pytest.mark.parametrize(("threshold", "cap"), [(0.0, 1), (1.5, 1), (0.8, 0)])
def test_bad_settings_are_refused(threshold: float, cap: int) -> None:
    with pytest.raises(ValueError):
        Deduplicator(threshold=threshold, max_per_prompt=cap)


def test_key_table_holds_what_was_added_through_growth() -> None:
    rng = random.Random(19)
    table = _KeyTable(4, counted=True)
    keys = [rng.getrandbits(64) | 1 for _ in range(20_000)]
    added = Counter[int]()
    for key in keys + keys[:5000]:
        table.increment(key)
        added[key] += 1
    assert all(key in table and table.count(key) == added[key] for key in keys)
    assert not any(rng.getrandbits(64) | 1 in table for _ in range(20_000))
    table.add_all(keys[:100])
    assert table.count(keys[0]) == added[keys[0]]


def test_key_table_survives_keys_crowding_its_top() -> None:
    """Keys whose home slots are all the last one overflow the spare slots and need more."""
    table = _KeyTable(4)
    keys = [(1 << 64) - 2 * i - 1 for i in range(3000)]
    table.add_all(keys[:1500])
    for key in keys[1500:]:
        table.add(key)
    assert all(key in table for key in keys)
    assert (1 << 63) not in table
