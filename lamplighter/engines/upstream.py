"""An OpenAI-compatible inference server as a backend: vLLM, SGLang, llama.cpp server, Ollama,
TGI, or ``lamplighter sim-backend``.

Prompts are counted before generation by an estimate (the upstream's tokenizer is not here);
the upstream's own usage report, asked for with ``stream_options.include_usage``, replaces the
estimate when the answer ends. Closing the stream closes the HTTP connection, which these servers
take as a cancellation.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import httpx

from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest, grant
from lamplighter.exceptions import ConfigError, EngineFailed, Overloaded

# Chat templates wrap each message in a few tokens of markup.
TOKENS_PER_MESSAGE = 4
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str  # base URL including /v1
    models: tuple[str, ...]
    capacity: int = 16
    n_ctx: int = 8192
    api_key: str = ""
    timeout_s: float = 600.0
    # Send the plan's priority (vLLM started with --scheduling-policy priority honours it, so
    # paying requests also go first inside the engine's own queue).
    send_priority: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> UpstreamConfig:
        """One ``[[backends]]`` table of the config file."""
        unknown = set(table) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"[[backends]]: unknown keys {sorted(unknown)}")
        try:
            config = cls(
                name=str(table["name"]),
                url=str(table["url"]).rstrip("/"),
                models=tuple(str(model) for model in table["models"]),
                capacity=int(table.get("capacity", 16)),
                n_ctx=int(table.get("n_ctx", 8192)),
                api_key=str(table.get("api_key", "")),
                timeout_s=float(table.get("timeout_s", 600.0)),
                send_priority=bool(table.get("send_priority", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"[[backends]] entry {dict(table)!r}: {exc}") from exc
        if not config.models or config.capacity < 1 or config.n_ctx < 1:
            raise ConfigError(f"[[backends]] {config.name}: needs models, capacity and n_ctx")
        return config


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    return sum(
        TOKENS_PER_MESSAGE + math.ceil(len(turn.content) / CHARS_PER_TOKEN)
        for turn in request.turns
    )


class UpstreamBackend:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=config.url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=config.capacity * 2),
        )

    @property
    def models(self) -> tuple[str, ...]:
        return self.config.models

    @property
    def ready(self) -> bool:
        return True

    @property
    def capacity(self) -> int:
        return self.config.capacity

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        prompt = estimate_prompt_tokens(request)
        return PreparedRequest(
            request=request,
            prompt_tokens=prompt,
            max_tokens=grant(request, prompt, self.config.n_ctx),
        )

    def _body(self, prepared: PreparedRequest) -> dict[str, Any]:
        request = prepared.request
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": t.role, "content": t.content} for t in request.turns],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # Without an explicit limit the upstream fills its own context, which it knows exactly;
        # sending our estimate of the room could overshoot its window.
        room = self.config.n_ctx - prepared.prompt_tokens
        if request.max_tokens is not None or prepared.max_tokens < room:
            body["max_tokens"] = prepared.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if self.config.send_priority:
            body["priority"] = request.priority
        if request.seed is not None:
            body["seed"] = request.seed
        if request.frequency_penalty:
            body["frequency_penalty"] = request.frequency_penalty
        if request.presence_penalty:
            body["presence_penalty"] = request.presence_penalty
        return body

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        finish: str | None = None
        produced = 0
        usage: dict[str, Any] | None = None
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json=self._body(prepared)
            ) as response:
                if response.status_code in (429, 503):
                    # The upstream is full: to our client that is overload, to be retried.
                    raise Overloaded(
                        f"Backend '{self.name}' is at capacity.",
                        retry_after=float(response.headers.get("retry-after") or 1),
                    )
                if response.status_code != 200:
                    await response.aread()
                    raise EngineFailed(
                        f"Backend '{self.name}' answered {response.status_code}: "
                        f"{response.text[:200]}"
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            produced += 1
                            yield Chunk(text)
        except httpx.HTTPError as exc:
            raise EngineFailed(f"Backend '{self.name}' failed: {exc}") from exc
        # The upstream's own count, when it gives one, is the truth about what was generated.
        completion = int(usage["completion_tokens"]) if usage else produced
        yield Chunk(
            "",
            tokens=completion - produced,
            finish_reason=finish or "stop",
            prompt_tokens=int(usage["prompt_tokens"]) if usage else None,
        )

    async def close(self) -> None:
        await self._client.aclose()
