"""An OpenAI-compatible inference server as a backend: vLLM, SGLang, llama.cpp server, Ollama,
TGI, or ``lamplighter sim-backend``.

Prompts are counted before generation by an estimate (the upstream's tokenizer is not here);
the upstream's own usage report, asked for with ``stream_options.include_usage``, replaces the
estimate when the answer ends. Closing the stream closes the HTTP connection, which these servers
take as a cancellation.

Each upstream has a health probe and a circuit breaker (``health.py``). A request fails *before
its first token* with :class:`~lamplighter.engines.router.Unavailable` (which the chat service
answers by trying another backend) when the breaker is open, the server cannot be reached,
answers 5xx, or sends no token within ``first_token_timeout_s``; its own 429 is ``Overloaded``,
also tried elsewhere. After the first token a failure ends the answer with ``EngineFailed``.
Every call has a connect timeout and a read timeout, so none can hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest, grant
from lamplighter.engines.health import Breaker, Load, Probe, env_proxy
from lamplighter.engines.router import Refused, Unavailable
from lamplighter.exceptions import ConfigError, EngineFailed, Overloaded
from lamplighter.settings import check_keys
from lamplighter.traffic.clock import Clock, SystemClock

log = logging.getLogger(__name__)

# Chat templates wrap each message in a few tokens of markup.
TOKENS_PER_MESSAGE = 4
CHARS_PER_TOKEN = 4
# The longest line of the upstream's event stream it may send (aiohttp refuses longer ones).
READ_BUFFER = 2**19  # a line may be twice this
_LEAST_TOP_P = 1e-6
# A refusal's size of the context window, as OpenAI, vLLM and the simulator word it.
_CONTEXT_WINDOW = re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE)
# A parameter's path (``tools``, ``messages[0].content``) and nothing else is passed on.
_PARAM = re.compile(r"[\w.\[\]-]{1,200}")


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str  # base URL including /v1
    models: tuple[str, ...]
    capacity: int = 16
    n_ctx: int = 8192
    api_key: str = ""
    # Seconds to wait for the upstream's next bytes; connecting has its own limit, and so has
    # the wait for the first token.
    timeout_s: float = 600.0
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 60.0
    # Send the plan's priority (vLLM started with --scheduling-policy priority honours it, so
    # paying requests also go first inside the engine's own queue). TOML key: ``priority``.
    send_priority: bool = False
    weight: float = 1.0
    plans: tuple[str, ...] = ()  # empty: every plan
    health_url: str = ""  # empty: {url}/models
    metrics_url: str | None = None  # None: {server}/metrics; empty: not scraped
    health_interval_s: float = 5.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 10.0

    @property
    def server(self) -> str:
        """The server's root: the base URL without its trailing ``/v1``."""
        return self.url.removesuffix("/v1")

    @property
    def resolved_health_url(self) -> str:
        return _resolve(self.health_url, self.server) if self.health_url else self.url + "/models"

    @property
    def resolved_metrics_url(self) -> str | None:
        if self.metrics_url is None:
            return self.server + "/metrics"
        return _resolve(self.metrics_url, self.server) if self.metrics_url else None

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> UpstreamConfig:
        """One ``[[backends]]`` table of the config file. ``api_key_env`` is looked up in
        ``env`` (default: the process environment)."""
        return _Table(table, os.environ if env is None else env).config()


_KEYS = {
    "name", "url", "models", "capacity", "weight", "plans", "n_ctx", "api_key", "api_key_env",
    "timeout_s", "connect_timeout_s", "first_token_timeout_s", "priority", "send_priority",
    "health_url", "metrics_url", "health_interval_s", "breaker_failures", "breaker_cooldown_s",
}  # fmt: skip


class _Table:
    """Reads one ``[[backends]]`` table, refusing anything doubtful with a message that names
    the backend and the key."""

    def __init__(self, table: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.table = table
        self.env = env
        name = table.get("name")
        self.where = f"[[backends]] '{name}'" if isinstance(name, str) else "[[backends]]"

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {message}")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(f"'{key}' is required")
        if not isinstance(value, str):
            raise self.fail(f"'{key}' must be a string, not {value!r}")
        return value

    def integer(self, key: str, default: int, least: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise self.fail(f"'{key}' must be an integer of at least {least}, not {value!r}")
        return value

    def number(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self.table.get(key, default)
        bad = isinstance(value, bool) or not isinstance(value, int | float)
        if bad or not math.isfinite(value) or value < 0 or (positive and value == 0):
            kind = "a positive number" if positive else "a number of at least 0"
            raise self.fail(f"'{key}' must be {kind}, not {value!r}")
        return float(value)

    def strings(self, key: str, *, required: bool) -> tuple[str, ...]:
        value = self.table.get(key, [] if not required else None)
        if value is None:
            raise self.fail(f"'{key}' is required")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"'{key}' must be a list of names, not {value!r}")
        if required and not value:
            raise self.fail(f"'{key}' must name at least one")
        return tuple(dict.fromkeys(value))

    def config(self) -> UpstreamConfig:
        check_keys(self.where, self.table, _KEYS)
        name = self.string("name")
        if not name:
            raise self.fail("'name' must not be empty")
        url = self.string("url").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise self.fail(f"'url' must be an http:// or https:// URL, not {url!r}")
        api_key = self.string("api_key", "")
        variable = self.string("api_key_env", "")
        if variable:
            if api_key:
                raise self.fail("give 'api_key' or 'api_key_env', not both")
            api_key = self.env.get(variable, "")
            if not api_key:
                raise self.fail(f"'api_key_env': the environment variable {variable} is not set")
        if "priority" in self.table and "send_priority" in self.table:
            raise self.fail("'send_priority' is the old name of 'priority': give one")
        key = "send_priority" if "send_priority" in self.table else "priority"
        priority = self.table.get(key, False)
        if not isinstance(priority, bool):
            raise self.fail(f"'{key}' must be true or false, not {priority!r}")
        metrics = self.table.get("metrics_url")
        if metrics is not None and not isinstance(metrics, str):
            raise self.fail(f"'metrics_url' must be a string, not {metrics!r}")
        for key in ("health_url", "metrics_url"):
            value = self.string(key, "")
            if value and not value.startswith(("/", "http://", "https://")):
                raise self.fail(f"'{key}' must be a URL or a path starting with /, not {value!r}")
        return UpstreamConfig(
            name=name,
            url=url,
            models=self.strings("models", required=True),
            capacity=self.integer("capacity", 16, 1),
            n_ctx=self.integer("n_ctx", 8192, 1),
            api_key=api_key,
            timeout_s=self.number("timeout_s", 600.0),
            connect_timeout_s=self.number("connect_timeout_s", 5.0),
            first_token_timeout_s=self.number("first_token_timeout_s", 60.0),
            send_priority=priority,
            weight=self.number("weight", 1.0),
            plans=self.strings("plans", required=False),
            health_url=self.string("health_url", ""),
            metrics_url=metrics,
            health_interval_s=self.number("health_interval_s", 5.0),
            breaker_failures=self.integer("breaker_failures", 3, 1),
            breaker_cooldown_s=self.number("breaker_cooldown_s", 10.0, positive=False),
        )


def upstreams_from_config(
    tables: object, env: Mapping[str, str] | None = None
) -> list[UpstreamConfig]:
    """Every ``[[backends]]`` table; names must be unique (they name admission pools)."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("[[backends]] must be an array of tables")
    configs = [UpstreamConfig.from_table(table, env) for table in tables]
    names = [config.name for config in configs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"[[backends]]: names must be unique; given more than once: {twice}")
    return configs


def _resolve(value: str, server: str) -> str:
    return server + value if value.startswith("/") else value


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """The prompt's tokens, before the upstream counts them: its messages' text, their tool
    calls, and the tools' definitions (which chat templates write into the prompt)."""
    chars = sum(len(t.content) + len(t.tool_calls or "") for t in request.turns)
    chars += len(request.tools or "")
    return TOKENS_PER_MESSAGE * len(request.turns) + math.ceil(chars / CHARS_PER_TOKEN)


class _Reported(Exception):
    """The upstream streamed an error event, or something that is not one of its events:
    ``str()`` is what it said, for the log (it can name internal hosts and devices)."""


class _Relay:
    """Reads the upstream's server-sent events: text and tool calls as they come, then the
    finish reason and usage at the end."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.finish: str | None = None
        self.done = False  # its "data: [DONE]" came
        self.thoughts = 0  # events of a reasoning model's thinking
        self.usage: dict[str, Any] | None = None
        self.produced = 0

    @property
    def ended(self) -> bool:
        """Whether the upstream said its answer ended (a finish reason, or [DONE]): a body that
        ends without either was cut off on its way (a proxy's timeout, a crash), or was not
        a stream at all."""
        return self.finish is not None or self.done

    def feed(self, line: str) -> Chunk | None:
        """The chunk an event line carries (None: nothing to relay)."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
        if not data or data == "[DONE]":
            return None
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise _Reported(f"an unreadable event: {data[:200]!r}") from exc
        if not isinstance(event, dict):
            return None
        if isinstance(event.get("error"), dict):
            raise _Reported(str(event["error"].get("message", ""))[:500])
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        text = ""
        calls: list[dict[str, Any]] = []
        logprobs: list[dict[str, Any]] = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            # A refusal (OpenAI's structured outputs) is the answer's text here: its client
            # reads why rather than an empty answer.
            text += delta.get("content") or delta.get("refusal") or ""
            pieces = delta.get("tool_calls")
            if isinstance(pieces, list):
                calls.extend(piece for piece in pieces if isinstance(piece, dict))
            found = (choice.get("logprobs") or {}).get("content")
            if isinstance(found, list):
                logprobs.extend(entry for entry in found if isinstance(entry, dict))
            # A reasoning model's thinking (vLLM's and SGLang's reasoning parsers) is not
            # relayed, but it shows the backend at work (see ``generate``).
            if delta.get("reasoning_content") or delta.get("reasoning"):
                self.thoughts += 1
            self.finish = choice.get("finish_reason") or self.finish
        if not text and not calls:
            return None
        self.produced += 1
        return Chunk(text, tool_calls=tuple(calls), logprobs=tuple(logprobs))

    def last(self) -> Chunk:
        # The upstream's own count, when it gives one, is the truth about what was generated.
        usage = self.usage or {}
        completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        if not isinstance(completion, int):
            completion = self.produced
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Chunk(
            "",
            tokens=completion - self.produced,
            finish_reason=self.finish or "stop",
            prompt_tokens=int(prompt) if isinstance(prompt, int) else None,
            cached_tokens=cached if isinstance(cached, int) and cached >= 0 else None,
        )


class UpstreamBackend:
    def __init__(self, config: UpstreamConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock or SystemClock()
        self._headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._completions = config.url + "/chat/completions"
        self._proxy = env_proxy(config.url)
        self._http: aiohttp.ClientSession | None = None  # made in the running loop, at first use
        self._closed = False
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_s)
        self.streams = 0  # generations running: a backend a reload replaced closes at 0
        self.probe = Probe(
            config.name,
            config.resolved_health_url,
            config.resolved_metrics_url,
            config.health_interval_s,
            self.clock,
            headers=self._headers,
            timeout_s=max(0.5, min(5.0, config.health_interval_s)),
        )
        # The answers being read, and when each last said something (see ``_cut_silent``).
        self._heard: dict[aiohttp.ClientResponse, float] = {}
        self.probe.on_down = self._cut_silent

    def _session(self) -> aiohttp.ClientSession:
        """The HTTP client (aiohttp: its C parser costs this gateway a third of what httpx's
        pure-Python one did per streamed answer). Made on first use, because it belongs to the
        event loop that runs it."""
        if self._http is None:
            if self._closed:
                raise RuntimeError(f"backend {self.name} is closed")
            self._http = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self.config.capacity * 2),
                # Connecting has its own limit; every read of the answer waits at most
                # timeout_s (the wait for the first token has its own limit in generate).
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.config.connect_timeout_s,
                    sock_read=self.config.timeout_s,
                ),
                read_bufsize=READ_BUFFER,
            )
        return self._http

    @property
    def models(self) -> tuple[str, ...]:
        return self.config.models

    @property
    def ready(self) -> bool:
        return self.probe.up

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def weight(self) -> float:
        return self.config.weight

    @property
    def plans(self) -> frozenset[str]:
        return frozenset(self.config.plans)

    @property
    def circuit(self) -> str:
        return self.breaker.state

    def accepting(self) -> bool:
        return self.probe.up and self.breaker.allows(self.clock.monotonic())

    def published(self) -> Load | None:
        return self.probe.published

    def retry_after(self) -> float:
        if not self.probe.up:
            return self.config.health_interval_s
        return self.breaker.retry_after(self.clock.monotonic())

    async def start(self) -> None:
        await self.probe.start()

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
            "messages": [_message(turn) for turn in request.turns],
            "temperature": request.temperature,
            # OpenAI takes 0 (only the likeliest token); vLLM and SGLang refuse anything not
            # above 0, and keep the likeliest token for any top_p.
            "top_p": max(request.top_p, _LEAST_TOP_P),
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
        if request.output_format is not None:
            body["response_format"] = request.output_format.response_format()
        if request.logprobs is not None:
            body["logprobs"] = True
            if request.logprobs:
                body["top_logprobs"] = request.logprobs
        if request.tools is not None:
            body["tools"] = json.loads(request.tools)
            if request.tool_choice is not None:
                body["tool_choice"] = json.loads(request.tool_choice)
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        return body

    def _failed(self) -> None:
        was = self.breaker.state
        self.breaker.failed(self.clock.monotonic())
        if self.breaker.state == "open" and was != "open":
            log.warning(
                "backend %s: circuit breaker open for %gs after %s",
                self.name,
                self.config.breaker_cooldown_s,
                "a failed trial" if was == "half_open" else f"{self.breaker.failures} failures",
            )

    def _cut_silent(self) -> None:
        """The health check found the backend down: end the answers it has said nothing of for
        a health interval (a hung server), rather than wait ``timeout_s`` for their next byte.
        Each breaks off as a stream cut by the backend does (a whole answer starts over on
        another backend); answers still arriving go on, in case only its /health is slow."""
        now = self.clock.monotonic()
        silent = [
            r for r, heard in self._heard.items() if now - heard >= self.config.health_interval_s
        ]
        if silent:
            log.warning("backend %s is down: ending %d silent answers", self.name, len(silent))
        for response in silent:
            response.close()

    def _succeeded(self) -> None:
        if self.breaker.state != "closed":
            log.warning("backend %s: circuit breaker closed, it answers again", self.name)
        self.breaker.succeeded()

    def _refusal(self, response: aiohttp.ClientResponse, body: str) -> Exception:
        """What a non-200 answer means, told to the breaker too. What the backend said goes to
        the log, not to the client: it can name internal hosts, paths and versions."""
        said = f"Backend '{self.name}' answered {response.status}."
        if response.status != 429:
            log.warning("backend %s answered %d: %s", self.name, response.status, body[:500])
        if response.status == 429:
            self._succeeded()  # alive, only full
            return Overloaded(
                f"Backend '{self.name}' is at capacity.",
                retry_after=_seconds(response.headers.get("retry-after")),
            )
        if response.status >= 500:
            self._failed()
            return Unavailable(said)
        self._succeeded()
        if response.status == 400:
            return _refused(body)
        return EngineFailed(said)

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        if not self.breaker.acquire(self.clock.monotonic()):
            raise Unavailable(
                f"Backend '{self.name}' is resting after failures (circuit breaker open)."
            )
        relay = _Relay(self.name)
        response: aiohttp.ClientResponse | None = None
        judged = False  # the breaker has heard how this request went
        self.streams += 1
        try:
            first: Chunk | None = None
            try:
                patience = self.config.first_token_timeout_s
                async with asyncio.timeout(patience) as waiting:
                    response = await self._session().post(
                        self._completions, json=self._body(prepared), proxy=self._proxy
                    )
                    if response.status != 200:
                        body = await response.text(errors="replace")
                        judged = True
                        raise self._refusal(response, body)
                    content = response.content  # lines as they come, each with its b"\n"
                    thoughts = 0
                    heard = self._heard
                    heard[response] = self.clock.monotonic()
                    async for raw in content:
                        heard[response] = self.clock.monotonic()
                        first = relay.feed(raw.decode("utf-8", "replace").strip())
                        if first is not None:
                            break
                        if relay.thoughts != thoughts:
                            # Thinking: not silent, so the wait starts again; but the client
                            # has nothing yet, so a failure now still goes to another backend.
                            thoughts = relay.thoughts
                            waiting.reschedule(asyncio.get_running_loop().time() + patience)
                    if first is None and not relay.ended:
                        raise _Reported("its answer ended before it began")
            except (aiohttp.ClientError, HttpProcessingError, TimeoutError, _Reported) as exc:
                judged = True
                self._failed()
                # The client hears what kind of failure, the log what the backend or the
                # connection said: their words name internal hosts, ports and devices.
                log.warning("backend %s failed before its first token: %s", self.name, _said(exc))
                if isinstance(exc, _Reported):
                    why = "it reported an error"
                elif isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
                    why = f"no token within {self.config.first_token_timeout_s:g}s"
                elif isinstance(exc, aiohttp.ClientConnectorError):
                    why = "could not connect"
                else:
                    why = "the connection broke"
                raise Unavailable(f"Backend '{self.name}' failed: {why}.") from exc
            judged = True
            if self.breaker.state != "closed":
                self._succeeded()  # the trial has its token: the backend answers again
            if first is not None:
                yield first
                try:
                    async for raw in content:
                        heard[response] = self.clock.monotonic()
                        chunk = relay.feed(raw.decode("utf-8", "replace").strip())
                        if chunk is not None:
                            yield chunk
                    if not relay.ended:
                        raise _Reported("its answer ended before its finish reason")
                except (aiohttp.ClientError, HttpProcessingError, _Reported) as exc:
                    self._failed()
                    # The client is told plainly; the words of the backend or of aiohttp (a
                    # transfer encoding's missing bytes) are for the log.
                    log.warning("backend %s broke off mid-answer: %s", self.name, _said(exc))
                    raise EngineFailed(
                        f"Backend '{self.name}' broke off in the middle of the answer."
                    ) from exc
            # Only a whole answer counts as a success while closed: a backend that breaks off
            # every answer after its first token has failed that many times in a row.
            self._succeeded()
            yield relay.last()
        finally:
            self.streams -= 1
            if not judged:
                self.breaker.abandoned()
            if response is not None:
                self._heard.pop(response, None)
                # Unless the answer was read to its end (the connection is back in the pool),
                # this closes the connection, which the upstream takes as a cancellation.
                response.close()

    async def close(self) -> None:
        self._closed = True
        await self.probe.stop()
        if self._http is not None:
            await self._http.close()


def _said(error: BaseException) -> str:
    """What a failure said, for the log: the backend's own words, or the exception's repr."""
    return f"it reported {str(error)!r}" if isinstance(error, _Reported) else repr(error)


def _message(turn: Turn) -> dict[str, Any]:
    """A turn as an OpenAI chat message, with its tool calls or the call it answers."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls is not None:
        message |= {"content": turn.content or None, "tool_calls": json.loads(turn.tool_calls)}
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
    return message


def _error_of(body: str) -> tuple[str, str | None]:
    """The message and ``param`` of an OpenAI-shaped error body (``{"error": {"message": ...,
    "param": ...}}``, or vLLM's flat ``{"message": ...}``); the body itself, shortened, and no
    param when it is neither."""
    try:
        found = json.loads(body)
    except ValueError:
        return body[:500], None
    if isinstance(found, dict):
        inner = found.get("error")
        fields = inner if isinstance(inner, dict) else found
        message, param = fields.get("message"), fields.get("param")
        if isinstance(message, str) and message:
            return message[:2000], param[:200] if isinstance(param, str) and param else None
    return body[:500], None


def _refused(body: str) -> Refused:
    """What a client is told of an upstream's 400: the parameter it named, and for a prompt
    its context cannot hold the window's size in OpenAI's words; never the upstream's own
    words, nor which backend it was (the log has both)."""
    message, param = _error_of(body)
    if param is not None and not _PARAM.fullmatch(param):
        param = None
    window = _CONTEXT_WINDOW.search(message)
    if window is not None:
        return Refused(
            f"This model's maximum context length is {window[1]} tokens. Please reduce the "
            "length of the messages or completion.",
            param=param or "messages",
            code="context_length_exceeded",
        )
    named = f" (its parameter '{param}')" if param else ""
    return Refused(
        f"The model's server refused the request{named}. Its reason is in this service's log.",
        param=param,
    )


def _seconds(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0
