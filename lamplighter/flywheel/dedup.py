"""Exact and near-duplicate prompt detection for the training-data export, by MinHash LSH.

``Deduplicator.check(text, context)`` sees the prompts of an export one at a time, in export
order, and gives each one verdict. A prompt is a text (the question) after its ``context``: the
turns of its conversation before it, as a ``Context`` built turn by turn with ``Context.then``
(none by default). The first rule that applies wins:

``"duplicate"``
    The prompt equals an earlier one (kept or not) once case is folded and runs of whitespace are
    collapsed to one space, turn by turn: the same text after the same context.
``"near_duplicate"``
    Its MinHash signature shares an LSH band with a text kept earlier after the same context: the
    two texts are estimated to have a Jaccard similarity of at least ``threshold`` (see
    *Similarity* and *Context* below).
``"over_frequent"``
    ``max_per_prompt`` prompts with the same *skeleton* have already been kept. The skeleton is
    the normalised prompt, context and text, with ASCII digits and ASCII punctuation taken out, so
    ``"Where is order #1234?"`` and ``"Where is order #98?"`` share one: this caps templated
    prompts that differ only in numbers or punctuation, which are often too short to be near
    duplicates by the threshold. Texts without letters share the empty skeleton and so the cap.
``"keep"``
    Otherwise. Only kept texts enter the LSH index and count against their skeleton's cap, so at
    most ``max_per_prompt`` prompts of one skeleton are ever kept, and a text is a near duplicate
    only of something the export actually contains.

Hence the first occurrence of a prompt is always ``"keep"`` unless it is near a kept one or its
skeleton is full. Verdicts depend only on the sequence of prompts checked: every hash and constant
is fixed here (no per-process salt, no random generator whose stream may change between numpy
versions), so the same store gives the same export, byte for byte.

Similarity
    Jaccard similarity of shingle sets. A text of at least ``_MIN_WORDS`` whitespace-separated
    words is shingled into word bigrams; a shorter one (including text in scripts written
    without spaces) into character 4-grams. Word 5-shingles, the usual choice for web pages, are
    too coarse for prompts of a few dozen words: one changed word in a 60-word prompt already
    brings the similarity to 0.84, two to 0.70, so almost nothing but verbatim copies would reach
    a 0.8 threshold. With bigrams one changed word gives 0.93 and two give 0.87. A short text and
    a long one are never near duplicates of each other (their shingles differ in kind).

Context
    Exact duplicates and the cap look at the whole prompt; near duplicates are looked for only
    among texts after the same context (the same turns, normalised), whose digest salts the
    text's band keys. The shingles of the whole prompt would not do: a long context shared by
    many prompts (a client's system prompt, a pasted document, the conversation's own earlier
    turns, which every later prompt of it contains) would make every question after it a near
    duplicate of the first. So the same follow-up after two different conversations is kept
    twice, and a question reworded after the same turns (an edit) is a near duplicate; prompts
    whose contexts differ at all (an answer sampled differently) are never near duplicates. A
    context is two 64-bit digests chained turn by turn, so the contexts of all the questions of
    a conversation cost one pass over its turns.

LSH
    ``_NUM_PERM`` 32-bit min-hashes are split into ``bands`` bands of ``rows`` rows; two texts
    collide when all rows of one band agree, which happens with probability
    ``1 - (1 - J**rows)**bands``. ``bands`` and ``rows`` are chosen for the threshold so that the
    mean miss rate above it plus the mean false-alarm rate below it is smallest; for 0.8 that is
    10 bands of 10 rows, which flags a pair with J = 0.9 99% of the time and one with J = 0.5 1%
    of the time. A collision is the verdict: no signature is kept to verify it.

Memory
    Only 64-bit keys are stored, in open-addressing tables held in numpy arrays (8 bytes a slot,
    at most 70% full): one key per distinct prompt checked (its exact form), ``bands`` keys per
    kept text, and a key with a 4-byte count per distinct skeleton kept; never a text, a context
    or a signature. A million prompts, all kept, take about 150 MiB at the default threshold; a
    table that doubles briefly needs a copy of its keys besides (under 100 MB up to that point).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from hashlib import blake2b
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Context", "Deduplicator", "Verdict"]

Verdict = Literal["keep", "duplicate", "near_duplicate", "over_frequent"]

_U64 = npt.NDArray[np.uint64]
_U32 = npt.NDArray[np.uint32]

_MASK64: Final = (1 << 64) - 1
_NUM_PERM: Final = 100
_MIN_WORDS: Final = 8
_CHAR_GRAM: Final = 4
# Shingles are min-hashed this many at a time, bounding the temporary matrix for huge texts.
_MINHASH_BLOCK: Final = 4096
_MAX_LOAD: Final = 0.7
# Slots past the last home slot, so that linear probing never wraps around (see _KeyTable).
_TAIL: Final = 1024
# Keys placed per numpy pass when a table grows, bounding the temporary arrays.
_GROW_BLOCK: Final = 1 << 16
# ASCII digits and punctuation become spaces in a skeleton; other bytes are kept, which is safe
# on UTF-8 because every byte of a multi-byte character is >= 0x80.
_SKELETON_TABLE: Final = bytes.maketrans(b"0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", b" " * 42)


def _splitmix64(seed: int) -> Iterator[int]:
    """A fixed stream of well-mixed 64-bit constants (the same on every platform and version)."""
    while True:
        seed = (seed + 0x9E3779B97F4A7C15) & _MASK64
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        yield z ^ (z >> 31)


def _constants(seed: int, n: int) -> _U64:
    stream = _splitmix64(seed)
    return np.array([next(stream) for _ in range(n)], dtype=np.uint64)


_WORD_MUL: Final = _constants(1, 2)
_CHAR_MUL: Final = _constants(2, _CHAR_GRAM)
# The min-hash permutations: x -> a*x + c mod 2**32, a odd, on already hashed shingles.
_PERM_A: Final = (_constants(3, _NUM_PERM) | np.uint64(1)).astype(np.uint32)
_PERM_C: Final = _constants(4, _NUM_PERM).astype(np.uint32)


@cache
def _lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (bands, rows) whose collision curve best separates pairs at ``threshold``.

    Minimises the mean probability of flagging a pair below the threshold plus the mean
    probability of missing one above it, over bands * rows <= num_perm.
    """
    below = (np.arange(200) + 0.5) / 200 * threshold
    above = threshold + (np.arange(200) + 0.5) / 200 * (1 - threshold)
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_alarm = float(np.mean(1 - (1 - below**rows) ** bands))
            miss = float(np.mean((1 - above**rows) ** bands))
            if best is None or false_alarm + miss < best[0]:
                best = (false_alarm + miss, bands, rows)
    assert best is not None
    return best[1], best[2]


def _digest(data: bytes, person: bytes) -> int:
    """A nonzero 64-bit key for ``data`` (zero marks an empty slot in a _KeyTable)."""
    return int.from_bytes(blake2b(data, digest_size=8, person=person).digest(), "little") or 1


class _KeyTable:
    """A set of nonzero 64-bit keys, optionally with a 32-bit count each.

    Open addressing with linear probing, 8 bytes a slot (12 with counts). A key's home slot is
    its top ``bits`` bits, so keys must be uniformly distributed (they are all hashes). Probing
    runs upward and never wraps: spare slots follow the last home slot, and more are added when a
    key lands in the very last one, which so stays empty and ends every probe.
    Without wrap-around, slots in key order are also in home order, which lets ``_grow`` place
    all keys with a few numpy calls instead of re-inserting them one by one. Lookups stay in
    Python through memoryviews: a few probes per key cost less than one numpy call. The probe
    loop is written out in each method that runs per check.
    """

    def __init__(self, bits: int, *, counted: bool = False) -> None:
        self._counted = counted
        self._size = 0
        self._allocate(bits, (1 << bits) + _TAIL)

    def _allocate(self, bits: int, slots: int) -> None:
        """Empty arrays of ``slots`` slots, with home slots of ``bits`` bits."""
        self._bits = bits
        self._keys: _U64 = np.zeros(slots, dtype=np.uint64)
        self._key_view = self._keys.data
        self._counts: _U32 = np.zeros(slots if self._counted else 0, dtype=np.uint32)
        self._count_view = self._counts.data

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._counts.nbytes

    def _find(self, key: int) -> int:
        """The slot holding ``key``, or the empty slot where it would go."""
        view = self._key_view
        slot = key >> (64 - self._bits)
        held = view[slot]
        while held and held != key:
            slot += 1
            held = view[slot]
        return slot

    def __contains__(self, key: int) -> bool:
        return self._key_view[self._find(key)] != 0

    def contains_any(self, keys: list[int]) -> bool:
        view = self._key_view
        shift = 64 - self._bits
        for key in keys:
            slot = key >> shift
            held = view[slot]
            while held:
                if held == key:
                    return True
                slot += 1
                held = view[slot]
        return False

    def add(self, key: int) -> int:
        """Insert ``key`` (count 0) if absent; return its slot."""
        slot = self._find(key)
        if self._key_view[slot]:
            return slot
        self._key_view[slot] = key
        self._size += 1
        if slot == len(self._key_view) - 1:
            self._extend(slot + 1 + _TAIL)
        if self._size > _MAX_LOAD * (1 << self._bits):
            self._grow()
            return self._find(key)
        return slot

    def add_all(self, keys: list[int]) -> None:
        view = self._key_view
        shift = 64 - self._bits
        for key in keys:
            slot = key >> shift
            held = view[slot]
            while held and held != key:
                slot += 1
                held = view[slot]
            if not held:
                view[slot] = key
                self._size += 1
                if slot == len(view) - 1:
                    self._extend(slot + 1 + _TAIL)
                    view = self._key_view
        del view  # would keep the old array alive while growing
        if self._size > _MAX_LOAD * (1 << self._bits):
            self._grow()

    def count(self, key: int) -> int:
        """The count beside ``key``; 0 if absent (an empty slot's count is 0)."""
        return int(self._count_view[self._find(key)])

    def increment(self, key: int) -> None:
        slot = self.add(key)  # first: adding may grow the table and replace the view
        self._count_view[slot] += 1

    def _grow(self) -> None:
        """Double the home slots and place every key again, a block of sorted keys at a time.

        Sorted keys are in home order, and key i of them goes to max(home_i, slot_{i-1} + 1):
        with q_i = slot_i - i that is the running maximum of home_i - i. The old arrays are let
        go before the new ones are made, so growing needs the new table plus a copy of the keys.
        """
        occupied = self._keys != 0
        keys = self._keys[occupied]
        counts = self._counts[occupied] if self._counted else None
        del occupied, self._key_view, self._count_view, self._keys, self._counts
        if counts is None:
            keys.sort()
        else:
            order = np.argsort(keys)
            keys, counts = keys[order], counts[order]
        bits = self._bits + 1
        self._allocate(bits, (1 << bits) + _TAIL)
        shift = np.uint64(64 - bits)
        carry = -1
        for start in range(0, keys.size, _GROW_BLOCK):
            block = keys[start : start + _GROW_BLOCK]
            index = np.arange(start, start + block.size, dtype=np.int64)
            slots = (block >> shift).astype(np.int64) - index
            slots[0] = max(int(slots[0]), carry)
            np.maximum.accumulate(slots, out=slots)
            carry = int(slots[-1])
            slots += index
            if slots[-1] >= self._keys.size - 1:
                self._extend(int(slots[-1]) + _TAIL)
            self._keys[slots] = block
            if counts is not None:
                self._counts[slots] = counts[start : start + block.size]

    def _extend(self, slots: int) -> None:
        """More spare slots at the top, for a run of keys that outgrew them."""
        keys, counts = self._keys, self._counts
        self._allocate(self._bits, slots)
        self._keys[: keys.size] = keys
        if self._counted:
            self._counts[: counts.size] = counts


def _normalise(text: str) -> tuple[list[str], bytes]:
    """The words of ``text`` with case folded, and the UTF-8 of them joined by single spaces."""
    words = text.casefold().split()
    # surrogatepass: a lone surrogate (valid in JSON) must not make check raise.
    return words, " ".join(words).encode("utf-8", "surrogatepass")


def _skeleton(encoded: bytes) -> bytes:
    """Normalised text without ASCII digits and punctuation."""
    return b" ".join(encoded.translate(_SKELETON_TABLE).split())


def _after(context: int, data: bytes) -> bytes:
    """``data`` prefixed by a context digest, if there is one (0: none)."""
    return context.to_bytes(8, "little") + data if context else data


@dataclass(frozen=True)
class Context:
    """What comes before a text in its prompt: the earlier turns of its conversation, as two
    64-bit digests (of their normalised forms and of their skeletons), chained turn by turn so
    that a conversation's contexts cost one pass over its turns. ``Context()`` is none."""

    exact: int = 0
    skeleton: int = 0

    def then(self, turn: str) -> Context:
        """This context followed by ``turn`` (which should say its role, if roles matter)."""
        _, encoded = _normalise(turn)
        return Context(
            _digest(self.exact.to_bytes(8, "little") + encoded, b"context"),
            _digest(self.skeleton.to_bytes(8, "little") + _skeleton(encoded), b"context-skeleton"),
        )


def _word_shingles(encoded: bytes) -> _U32:
    """Hashes of the word bigrams of normalised UTF-8 text of at least two words."""
    hashes = np.array([zlib.crc32(word) for word in encoded.split(b" ")], dtype=np.uint64)
    return _multiply_shift(hashes, _WORD_MUL)


def _char_shingles(text: str) -> _U32:
    """Hashes of the character 4-grams; a shorter text is padded to one."""
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    codes = code_points.astype(np.uint64) + 1
    if codes.size < _CHAR_GRAM:
        codes = np.concatenate([codes, np.zeros(_CHAR_GRAM - codes.size, np.uint64)])
    return _multiply_shift(codes, _CHAR_MUL)


def _multiply_shift(tokens: _U64, multipliers: _U64) -> _U32:
    """Vector multiply-shift hashes of each run of len(multipliers) consecutive tokens.

    (m0*t[i] + m1*t[i+1] + ...) mod 2**64, top 32 bits: a universal hash of the run, order
    included, for tokens below 2**32.
    """
    mixed = np.correlate(tokens, multipliers, "valid")
    shingles: _U32 = (mixed >> 32).astype(np.uint32)
    return shingles


class Deduplicator:
    """Gives each prompt of an export a verdict; see the module docstring for the rules.

    ``threshold`` is the Jaccard similarity (0 < threshold <= 1) from which a text is a near
    duplicate of a kept one; ``max_per_prompt`` (>= 1) caps the texts kept per skeleton.
    ``counts`` tallies the verdicts given so far.
    """

    def __init__(self, threshold: float = 0.8, max_per_prompt: int = 20) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {threshold}")
        if max_per_prompt < 1:
            raise ValueError(f"max_per_prompt must be at least 1, not {max_per_prompt}")
        self.threshold = threshold
        self.max_per_prompt = max_per_prompt
        self.bands, self.rows = _lsh_shape(threshold, _NUM_PERM)
        self.counts: dict[Verdict, int] = {
            "keep": 0,
            "duplicate": 0,
            "near_duplicate": 0,
            "over_frequent": 0,
        }
        perms = self.bands * self.rows
        self._perm_a = _PERM_A[:perms]
        self._perm_c = _PERM_C[:perms]
        # A band's key: its rows, as a vector, dotted with these even multipliers (mod 2**64)
        # plus the band's odd salt, so never zero (zero marks an empty slot).
        self._band_mul = _constants(5, self.rows) & ~np.uint64(1)
        self._band_salt = _constants(6, self.bands) | np.uint64(1)
        # Exact forms of every text seen and the band keys of every text kept, in one table:
        # the two kinds of key are unrelated hashes and never meet by more than chance (2**-64).
        self._index = _KeyTable(16)
        self._skeletons = _KeyTable(12, counted=True)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (the bulk of this object's memory)."""
        return self._index.nbytes + self._skeletons.nbytes

    def check(self, text: str, context: Context = Context()) -> Verdict:
        """The verdict for ``text`` after ``context``, recording it as seen (and as kept, if
        kept)."""
        verdict = self._verdict(text, context)
        self.counts[verdict] += 1
        return verdict

    def _verdict(self, text: str, context: Context) -> Verdict:
        words, encoded = _normalise(text)
        exact = _digest(_after(context.exact, encoded), b"exact")
        if exact in self._index:
            return "duplicate"
        self._index.add(exact)
        if len(words) >= _MIN_WORDS:
            shingles = _word_shingles(encoded)
        else:
            shingles = _char_shingles(" ".join(words))
        # Salted with the context: only texts after the same one can collide.
        band_keys = self._band_keys(shingles, context.exact & ~1)
        if self._index.contains_any(band_keys):
            return "near_duplicate"
        skeleton = _digest(_after(context.skeleton, _skeleton(encoded)), b"skeleton")
        if self._skeletons.count(skeleton) >= self.max_per_prompt:
            return "over_frequent"
        self._skeletons.increment(skeleton)
        self._index.add_all(band_keys)
        return "keep"

    def _minhash(self, shingles: _U32) -> _U32:
        hashed = np.multiply.outer(shingles, self._perm_a)
        hashed += self._perm_c
        signature: _U32 = hashed.min(axis=0)
        return signature

    def _band_keys(self, shingles: _U32, salt: int) -> list[int]:
        """The LSH band keys of a text's shingles, plus ``salt`` (even, so keys stay odd)."""
        signature = self._minhash(shingles[:_MINHASH_BLOCK])
        for start in range(_MINHASH_BLOCK, shingles.size, _MINHASH_BLOCK):
            block = shingles[start : start + _MINHASH_BLOCK]
            np.minimum(signature, self._minhash(block), signature)
        keys: _U64 = signature.reshape(self.bands, self.rows) @ self._band_mul + self._band_salt
        keys += np.uint64(salt)  # mod 2**64
        band_keys: list[int] = keys.tolist()
        return band_keys
