"""The seam every backend implements, in the spirit of httpx's transports.

A backend first ``prepare``s a request (counts the prompt with its own tokenizer and settles how
many tokens it may generate, refusing what cannot fit), then ``generate``s it as an async
iterator of :class:`Chunk`. Closing the iterator early (``aclose()``, or cancelling the task that
iterates it) stops the generation within one token and frees the backend's capacity.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from lamplighter.conversation.threading import Turn
from lamplighter.exceptions import ContextLengthExceeded


@dataclass(frozen=True)
class OutputFormat:
    """Structured output: the answer is one JSON object, valid against ``schema`` when one is
    given (JSON mode when not). The engine enforces it while sampling (llama.cpp by a grammar,
    vLLM and SGLang by guided decoding), so an answer cut short by its token limit is the only
    one that is not valid JSON."""

    # The JSON schema as compact JSON text (hashable, for the exact-match cache's key), its keys
    # in the order given: an engine writes an object's properties in the schema's order.
    schema: str | None = None
    name: str = "response"
    description: str | None = None
    strict: bool = False

    def response_format(self) -> dict[str, Any]:
        """As OpenAI's chat completions ``response_format``, which OpenAI-compatible servers
        take."""
        if self.schema is None:
            return {"type": "json_object"}
        spec: dict[str, Any] = {
            "name": self.name,
            "schema": json.loads(self.schema),
            "strict": self.strict,
        }
        if self.description is not None:
            spec["description"] = self.description
        return {"type": "json_schema", "json_schema": spec}


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    turns: tuple[Turn, ...]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # The most the caller's plan grants; a larger max_tokens is lowered to it, not refused.
    max_tokens_cap: int | None = None
    # The caller's plan priority (lower first), for backends that schedule by priority.
    priority: int = 0
    output_format: OutputFormat | None = None
    # Tool use, passed on to backends that offer it: OpenAI's ``tools`` and ``tool_choice`` as
    # compact JSON (hashable, and part of the exact-match cache's key).
    tools: str | None = None
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    # Log probabilities of the tokens generated, each with this many alternatives (0: none);
    # None: not asked for.
    logprobs: int | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the model may answer with tool calls."""
        return self.tools is not None and self.tool_choice != '"none"'


@dataclass(frozen=True)
class PreparedRequest:
    request: GenerationRequest
    prompt_tokens: int
    # The number of tokens the backend will generate at most: the request's own limit, or
    # whatever room the context window leaves.
    max_tokens: int
    # Backend-specific material (the token ids, a rendered prompt); opaque to everyone else.
    payload: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Chunk:
    text: str
    # Tokens generated since the previous chunk (text may be empty while a stop sequence is
    # being matched, but the tokens still count).
    tokens: int = 1
    # Set on the last chunk: "stop" (end of turn or a stop sequence) or "length".
    finish_reason: str | None = None
    # On the last chunk, when the backend counted the prompt itself more exactly than prepare().
    prompt_tokens: int | None = None
    # On the last chunk, when the backend says: how many of the prompt's tokens it found in its
    # prefix cache (vLLM's and SGLang's ``usage.prompt_tokens_details.cached_tokens``).
    cached_tokens: int | None = None
    # Pieces of tool calls, as OpenAI streams them (``delta.tool_calls``: each with its
    # ``index``, the first piece of a call with its ``id`` and function ``name``, then pieces
    # of its ``arguments``).
    tool_calls: tuple[dict[str, Any], ...] = ()
    # The log probabilities of the tokens of ``text``, when asked for: OpenAI's
    # ``logprobs.content`` entries (``token``, ``logprob``, ``bytes``, ``top_logprobs``).
    logprobs: tuple[dict[str, Any], ...] = ()


class ToolCalls:
    """The tool calls of an answer, put together from their streamed pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, pieces: tuple[dict[str, Any], ...]) -> None:
        for piece in pieces:
            index = piece.get("index", 0)
            call = self._calls.setdefault(
                index if isinstance(index, int) else 0,
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if isinstance(piece.get("id"), str):
                call["id"] = piece["id"]
            function = piece.get("function")
            if isinstance(function, dict):
                for field in ("name", "arguments"):
                    if isinstance(function.get(field), str):
                        call["function"][field] += function[field]

    def clear(self) -> None:
        self._calls.clear()

    def get(self, index: int) -> dict[str, Any] | None:
        """The call streamed with ``index``, as put together so far."""
        return self._calls.get(index)

    @property
    def calls(self) -> list[dict[str, Any]] | None:
        """As an assistant message's ``tool_calls``, in index order; None when there are none."""
        return [self._calls[i] for i in sorted(self._calls)] or None


def grant(request: GenerationRequest, prompt_tokens: int, n_ctx: int) -> int:
    """How many tokens a request may generate: its max_tokens (or all the room the context
    window leaves), lowered to its plan's cap. A max_tokens beyond the context window is refused
    whatever the plan, naming the parameter."""
    room = n_ctx - prompt_tokens
    if room < 1:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {n_ctx} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens.",
            param="messages",
        )
    cap = request.max_tokens_cap
    if request.max_tokens is None:
        return room if cap is None else min(room, cap)
    if request.max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_tokens + request.max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{request.max_tokens} in the completion). Please reduce the length of the messages "
            "or completion.",
            param="max_tokens",
        )
    return request.max_tokens if cap is None else min(request.max_tokens, cap)


class Backend(Protocol):
    name: str

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def capacity(self) -> int:
        """How many requests it can run at once without making any of them wait."""

    async def prepare(self, request: GenerationRequest) -> PreparedRequest: ...

    def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...
