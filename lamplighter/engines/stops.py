"""Stop sequences over a stream of text pieces.

Text that could be the start of a stop sequence is held back until the next piece shows whether
it is; nothing after the first complete stop sequence is ever released.
"""

from __future__ import annotations

from collections.abc import Sequence


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
        first = min(
            (index for index in (text.find(stop) for stop in self._stops) if index >= 0),
            default=-1,
        )
        if first >= 0:
            self.stopped = True
            self._held = ""
            return text[:first]
        keep = self._longest_partial(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Release what is held when generation ends without a stop sequence."""
        text, self._held = self._held, ""
        return "" if self.stopped else text

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
