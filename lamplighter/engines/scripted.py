"""A scripted backend: answers by a rule instead of a model, one word a token.

For tests and load experiments that need exact, repeatable answers. Shipped with the package so
that any deployment's test suite can use it (``backends = [ScriptedBackend(...)]``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest, grant
from lamplighter.exceptions import EngineFailed


def echo(turns: tuple[Turn, ...]) -> str:
    """The default rule: repeat the last message."""
    return f"You said: {turns[-1].content}" if turns else "Hello."


class ScriptedBackend:
    def __init__(
        self,
        model: str = "scripted",
        reply: Callable[[tuple[Turn, ...]], str] = echo,
        *,
        n_ctx: int = 4096,
        capacity: int = 8,
        fail_after: int | None = None,
        pace_s: float = 0.0,
    ) -> None:
        self.name = f"scripted:{model}"
        self.model = model
        self.reply = reply
        self.n_ctx = n_ctx
        self.capacity = capacity
        # Raise EngineFailed after this many tokens, to test how failures are handled.
        self.fail_after = fail_after
        # Seconds between words, as a GPU's decode steps take: an unpaced answer can be written
        # whole into the sockets' buffers before a client that leaves is noticed.
        self.pace_s = pace_s
        self.ready = True
        self.active = 0  # generations running now: a cancelled stream must bring it back to 0

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model,)

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        prompt = sum(len(turn.content.split()) + 1 for turn in request.turns)
        return PreparedRequest(
            request=request, prompt_tokens=prompt, max_tokens=grant(request, prompt, self.n_ctx)
        )

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        words = self.reply(prepared.request.turns).split(" ")
        self.active += 1
        try:
            for index, word in enumerate(words[: prepared.max_tokens]):
                await asyncio.sleep(self.pace_s)  # a real backend yields between tokens
                if index == self.fail_after:
                    raise EngineFailed("The scripted backend failed on purpose.")
                yield Chunk(word if index == 0 else " " + word)
            finish = "length" if len(words) > prepared.max_tokens else "stop"
            yield Chunk("", tokens=0, finish_reason=finish)
        finally:
            self.active -= 1

    async def close(self) -> None:
        self.ready = False
