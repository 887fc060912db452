"""Near-duplicate detection: checks per second and peak memory of the export's Deduplicator.

What is measured
    ``Deduplicator.check`` over ``--n`` synthetic prompts of about 300 characters, one core:
    the rate (checks over the seconds spent inside ``check``, generation left out), the peak
    resident set size of the whole process (``resource.getrusage``, so Python, numpy and the
    generator's buffers included), the bytes held by the deduplicator's tables, and its verdicts
    broken down by the kind of prompt generated.

Why
    The training-data export runs the deduplicator over every prompt of the store. Its targets:
    1,000,000 prompts within a peak RSS of 1 GB for the whole export process, of which the
    deduplicator should take well under 400 MB, and at least 20,000 checks/s.

The prompts
    Words are drawn from a Zipf-like vocabulary of 50,000 made-up words. Of the prompts:
    70% are new (40 to 70 words); 12% repeat a recent new prompt with its case and spacing
    changed (expected "duplicate"); 12% repeat one with one or two words replaced (a word-bigram
    Jaccard similarity of 0.90 to 0.94 with one, 0.81 to 0.89 with two: mostly
    "near_duplicate", the rest "keep"); 6% fill one of 200 short templates with random numbers
    (at most 20 of each kept, the rest "over_frequent" or, when close enough to a kept one,
    "near_duplicate"). They are made in batches of 10,000 and never all held at once, so that
    memory reflects the deduplicator.

Run it from the repository root: ``.venv/bin/python -m bench.dedup --n 1000000``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import string
import time
from collections import Counter

from lamplighter.flywheel.dedup import Deduplicator

_BATCH = 10_000
_VOCABULARY = 50_000
_TEMPLATES = 200
# Recent new prompts that exact and near duplicates are drawn from.
_POOL = 20_000
_KINDS = ("new", "exact", "near", "templated")
_WEIGHTS = (70, 12, 12, 6)


class _Prompts:
    """A reproducible stream of (kind, prompt) pairs; see the module docstring."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self._words = [self._word() for _ in range(_VOCABULARY)]
        self._cumulative = list(
            itertools.accumulate(1 / rank for rank in range(1, _VOCABULARY + 1))
        )
        self._templates = [
            " ".join(self._draw(self._random.randint(4, 8))) + " #{} " + self._word() + " {}?"
            for _ in range(_TEMPLATES)
        ]
        self._pool: list[str] = []

    def _word(self) -> str:
        return "".join(self._random.choices(string.ascii_lowercase, k=self._random.randint(2, 9)))

    def _draw(self, k: int) -> list[str]:
        return self._random.choices(self._words, cum_weights=self._cumulative, k=k)

    def batch(self) -> list[tuple[str, str]]:
        kinds = self._random.choices(_KINDS, weights=_WEIGHTS, k=_BATCH)
        return [(kind, self._prompt(kind)) for kind in kinds]

    def _prompt(self, kind: str) -> str:
        if kind == "templated":
            template = self._random.choice(self._templates)
            return template.format(self._random.randrange(10**6), self._random.randrange(100))
        if kind == "new" or not self._pool:
            prompt = " ".join(self._draw(self._random.randint(40, 70)))
            if len(self._pool) < _POOL:
                self._pool.append(prompt)
            else:
                self._pool[self._random.randrange(_POOL)] = prompt
            return prompt
        words = self._random.choice(self._pool).split()
        if kind == "exact":
            words[0] = words[0].upper()
            return "  ".join(words) + "\n"
        for i in self._random.sample(range(len(words)), self._random.randint(1, 2)):
            words[i] = self._random.choice(self._words)
        return " ".join(words)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(n: int, seed: int) -> None:
    prompts = _Prompts(seed)
    baseline = _peak_rss_mb()
    dedup = Deduplicator()
    seen: Counter[tuple[str, str]] = Counter()
    checked = 0
    busy = 0.0
    mean_length = 0.0
    while checked < n:
        batch = prompts.batch()[: n - checked]
        texts = [text for _, text in batch]
        mean_length += sum(map(len, texts))
        start = time.perf_counter()
        verdicts = [dedup.check(text) for text in texts]
        busy += time.perf_counter() - start
        seen.update((kind, verdict) for (kind, _), verdict in zip(batch, verdicts, strict=True))
        checked += len(batch)
    print(f"prompts:        {checked:,} (mean {mean_length / checked:.0f} characters)")
    print(f"rate:           {checked / busy:,.0f} checks/s ({busy:.1f} s inside check)")
    print(f"peak RSS:       {_peak_rss_mb():,.0f} MB (before the deduplicator: {baseline:,.0f} MB)")
    print(f"tables:         {dedup.nbytes / 2**20:,.0f} MiB")
    print(f"LSH:            {dedup.bands} bands x {dedup.rows} rows")
    print("verdicts:       " + ", ".join(f"{v} {c:,}" for v, c in dedup.counts.items()))
    print(f"{'generated':>12}" + "".join(f"{verdict:>16}" for verdict in dedup.counts))
    for kind in _KINDS:
        print(f"{kind:>12}" + "".join(f"{seen[kind, verdict]:>16,}" for verdict in dedup.counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="prompts to check")
    parser.add_argument("--seed", type=int, default=1, help="seed of the prompt generator")
    args = parser.parse_args()
    run(args.n, args.seed)


if __name__ == "__main__":
    main()
