"""Stop sequences over a stream of text pieces.

Text that could be the start of a stop sequence is held back until the next piece shows whether
it is; nothing after the first complete stop sequence is ever released.

:class:`StopMatcher` holds back and releases text by the character. :class:`TokenStopMatcher`
does it by the token, for an answer whose tokens carry their log probabilities: a token is
released whole or not at all, so the entries released join to exactly the text released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def _first_stop(stops: Sequence[str], text: str) -> int:
    """Where the first stop sequence in ``text`` begins, or -1."""
    return min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=-1)


def _longest_partial(stops: Sequence[str], text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add generated text; return the text now safe to release."""
        if self.stopped:
            return ""
        text = self._held + piece
        first = _first_stop(self._stops, text)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return text[:first]
        keep = _longest_partial(self._stops, text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Release what is held when generation ends without a stop sequence."""
        text, self._held = self._held, ""
        return "" if self.stopped else text


class TokenStopMatcher(Generic[T]):
    """Stop sequences over tokens, each with what it carries (its log probability entry).

    A token any of whose text could begin a stop sequence is held whole; at a stop, the token
    the stop begins in is left out whole, with its text before the stop. So the answer ends at
    the last whole token before the stop (OpenAI's rule for logprobs: an entry is given only
    for a token whose text is in the content), and the tokens released join to the text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held: list[tuple[str, T]] = []
        self.stopped = False

    def feed(self, text: str, carried: T) -> list[tuple[str, T]]:
        """Add a generated token; return the tokens now safe to release, in order."""
        if self.stopped:
            return []
        self._held.append((text, carried))
        joined = "".join(piece for piece, _ in self._held)
        first = _first_stop(self._stops, joined)
        self.stopped = first >= 0
        end = first if self.stopped else len(joined) - _longest_partial(self._stops, joined)
        released: list[tuple[str, T]] = []
        at = 0
        for piece, entry in self._held:
            if at + len(piece) > end:
                break
            at += len(piece)
            released.append((piece, entry))
        self._held = [] if self.stopped else self._held[len(released) :]
        return released

    def flush(self) -> list[tuple[str, T]]:
        """Release what is held when generation ends without a stop sequence."""
        held, self._held = self._held, []
        return [] if self.stopped else held
