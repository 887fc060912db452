"""The OpenAI-compatible API: ``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from lamplighter.api import guard
from lamplighter.api.middleware import RATE_LIMIT_HEADERS
from lamplighter.api.responses import (
    SSE_DONE,
    DeferredJSONResponse,
    EventStreamResponse,
    sse,
    unless_disconnected,
)
from lamplighter.api.schemas import ChatCompletionRequest, check_tool_turns
from lamplighter.api.state import Services, State
from lamplighter.chat import Exchange, Placement, Principal, TokenCount
from lamplighter.engines.base import GenerationRequest
from lamplighter.exceptions import (
    APIError,
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    ShuttingDown,
)
from lamplighter.store.audit import Audit

router = APIRouter(prefix="/v1")
# Sent with a non-streamed answer that a stopping server cut short.
CUT_WARNING = "the server stopped before this answer was finished; finish_reason is length"
log = logging.getLogger(__name__)


def require_scope(who: Principal, scope: str) -> None:
    if scope not in who.scopes:
        raise PermissionDenied(
            f"This API key lacks the '{scope}' scope (it has: {', '.join(sorted(who.scopes))}). "
            f"Create one with `lamplighter keys create EMAIL --scope {scope}`.",
            code="insufficient_scope",
        )


async def principal(request: Request, state: State) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'; "
            "create one with `lamplighter keys create EMAIL`.",
            code="missing_api_key",
        )
    who = await state.accounts.authenticate(secret.strip())
    # Read only if the answer has none of its own (see RateLimitHeaders): a chat completion's
    # come with its reservation, and reading them here as well cost two Redis round trips.
    headers = partial(state.limiter.headers, state.plans.get(who.plan), who.user_id)
    setattr(request.state, RATE_LIMIT_HEADERS, headers)
    return who


async def chat_principal(request: Request, state: State) -> Principal:
    who = await principal(request, state)
    require_scope(who, "chat")
    guard.refuse_banned(state, *guard.subjects(request, who))
    plan = state.plans.get(who.plan)
    if plan.browser_only:
        refused = PermissionDenied(
            f"Plan '{plan.name}' is for the web chat only; the API needs another plan.",
            code="browser_only_plan",
        )
        refused.violation = "non_browser"
        guard.count(state, refused, *guard.subjects(request, who))
        raise refused
    return who


Caller = Annotated[Principal, Depends(chat_principal)]


async def leak_warning(state: Services, who: Principal, texts: list[str]) -> dict[str, str]:
    """A warning header when live API keys appear in the messages: whoever sees the
    conversation (or a model's training data) could use them. The caller's own keys are
    flagged for rotation; someone else's key is compromised and revoked on the spot (its owner
    sees it revoked, and the audit log says why)."""
    leaked = await state.accounts.keys_in(texts)
    if not leaked:
        return {}
    notes = []
    for key in leaked:
        log.warning("api key found in a prompt", extra={"api_key_id": str(key.id)})
        if key.user_id == who.user_id:
            notes.append(f"API key {key.prefix}... appears in the messages; rotate it")
            continue
        audit = Audit(None, "system", "key.revoke", str(key.id), {"why": "found in a prompt"})
        with contextlib.suppress(NotFound):  # revoked meanwhile
            await state.accounts.revoke_key(key.id, audit=audit)
        notes.append(f"API key {key.prefix}... of another account was revoked")
    return {"x-lamplighter-warning": "; ".join(notes) + "."}  # headers are latin-1


# A model card's "created": when this process began serving (the module is imported as the
# app is built), the same on every call, as OpenAI's is.
SERVING_SINCE = int(time.time())


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": SERVING_SINCE, "owned_by": "lamplighter"}


@router.get("/models")
async def list_models(who: Caller, state: State) -> dict[str, Any]:
    """Only the models the caller's plan may use, as OpenAI lists only an account's."""
    models = state.models_for(who.plan)
    return {"object": "list", "data": [_model_card(model) for model in models]}


@router.get("/models/{model:path}")
async def get_model(model: str, who: Caller, state: State) -> dict[str, Any]:
    if model not in state.models_for(who.plan):
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
    return _model_card(model)


async def open_exchange(
    http: Request,
    who: Principal,
    state: Services,
    request: GenerationRequest,
    *,
    store: bool,
    token_param: str,
    input_param: str = "messages",
    placement: Placement | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[Exchange, dict[str, str]]:
    """Open an exchange for an API request, and the headers its answer carries. Validation,
    prompt counting and storing the question happen before the response starts, so every
    refusal is a plain HTTP error rather than an error inside a stream; a refusal about the
    answer's length names the field the client used for it (``token_param``), one about the
    prompt's the field the prompt came in (``input_param``: the Responses API's ``input``)."""
    try:
        # Waiting for admission ends the moment the client leaves: its place in the queue goes
        # to someone who is still there.
        exchange = await unless_disconnected(
            http,
            state.chat.open(who, request, store=store, placement=placement, metadata=metadata),
        )
    except APIError as error:
        guard.count(state, error, *guard.subjects(http, who))
        if error.param == "max_tokens":
            error.param = token_param
        elif error.param == "messages":
            error.param = input_param
        raise
    try:
        headers = exchange.headers
        headers.update(await leak_warning(state, who, [turn.content for turn in request.turns]))
        question = next((t.content for t in reversed(request.turns) if t.role == "user"), "")
        await guard.watch_prompt(state, who, question)
    except BaseException:
        await exchange.close()  # no response will: its slot and answer must not be left open
        raise
    return exchange, headers


@router.post("/chat/completions")
async def chat_completions(
    http: Request,
    body: ChatCompletionRequest,
    who: Caller,
    state: State,
) -> Response:
    turns = tuple(message.turn() for message in body.messages)
    check_tool_turns(turns)  # tool results answer calls, as at OpenAI
    request = GenerationRequest(
        model=body.model,
        turns=turns,
        max_tokens=body.token_limit,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=body.stops,
        seed=body.seed,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        output_format=body.output_format,
        logprobs=body.logprobs_asked,
        **body.tool_use,
    )
    token_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    exchange, headers = await open_exchange(
        http,
        who,
        state,
        request,
        store=body.store is not False,
        token_param=token_param,
        metadata=body.metadata,
    )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(
            _events(exchange, include_usage), headers, finally_=exchange.close
        )

    return whole_answer(exchange, headers, partial(_completion, exchange), CUT_WARNING)


def whole_answer(
    exchange: Exchange, headers: dict[str, str], render: Callable[[], Any], cut_warning: str
) -> DeferredJSONResponse:
    """A non-streamed answer: ``render()``'s body once the exchange has run to its end, or the
    error it failed with; an answer a stopping server cut off says so in a header. Nothing is
    sent before the end, so a backend failing part-way is replaced by another."""
    exchange.whole = True

    async def produce() -> tuple[int, Any, dict[str, str]]:
        try:
            async for _ in exchange.stream():
                pass
        except APIError as error:
            return error.status_code, error.body(), error.headers
        if exchange.interrupted is not None:
            return 200, render(), {"x-lamplighter-warning": cut_warning}
        return 200, render(), {}

    return DeferredJSONResponse(produce, headers, finally_=exchange.close)


def _completion(exchange: Exchange) -> dict[str, Any]:
    # A shutdown's cut reads as "length": the answer stopped at a limit.
    finish = "length" if exchange.interrupted else exchange.finish_reason
    return completion_body(
        exchange.id,
        exchange.created,
        exchange.model,
        exchange.content,
        finish,
        exchange.usage,
        exchange.metadata,
        exchange.calls.calls,
        exchange.logprobs if exchange.prepared.request.logprobs is not None else None,
    )


def completion_body(
    name: str,
    created: int,
    model: str,
    content: str,
    finish: str | None,
    usage: TokenCount,
    metadata: dict[str, str] | None,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object; ``metadata`` is the client's, as stored with it. An answer
    that calls tools has them in ``tool_calls``, and null content if it said nothing;
    ``logprobs`` are its tokens' log probabilities, when they were asked for."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message |= {"content": content or None, "tool_calls": tool_calls}
    return {
        "id": name,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": finish,
            }
        ],
        "usage": usage.openai(),
        "metadata": metadata or None,
    }


async def _events(exchange: Exchange, include_usage: bool) -> AsyncIterator[bytes]:
    head = {
        "id": exchange.id,
        "object": "chat.completion.chunk",
        "created": exchange.created,
        "model": exchange.model,
        "system_fingerprint": None,
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    asked = exchange.prepared.request.logprobs is not None

    def frame(
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: tuple[dict[str, Any], ...] = (),
    ) -> bytes:
        found = {"content": list(logprobs), "refusal": None} if asked and logprobs else None
        choice = {"index": 0, "delta": delta, "logprobs": found, "finish_reason": finish}
        return sse({**head, "choices": [choice], **extra})

    # The first chunk names the role. An answer that may call tools names it with its first
    # piece: with null content if that is a call (as OpenAI streams a calls-only answer).
    opened = not exchange.prepared.request.calls_tools
    if opened:
        yield frame({"role": "assistant", "content": ""})
    chunks = exchange.stream()
    try:
        async for chunk in chunks:
            calls = list(chunk.tool_calls)
            if not opened:
                opened = True
                if calls and not chunk.text:
                    yield frame({"role": "assistant", "content": None, "tool_calls": calls})
                    calls = []
                else:
                    yield frame({"role": "assistant", "content": ""})
            if chunk.text or chunk.logprobs:
                yield frame({"content": chunk.text}, logprobs=chunk.logprobs)
            if calls:
                yield frame({"tool_calls": calls})
            if chunk.finish_reason is not None:
                yield frame({}, chunk.finish_reason)
    except APIError as error:
        yield sse(error.body())
        return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    if include_usage:
        yield sse({**head, "choices": [], "usage": exchange.usage.openai()})
    if exchange.interrupted is not None:
        # Said after the usage, which a client reading until an error still gets.
        yield sse(ShuttingDown(exchange.interrupted, retry_after=1).body())
    yield SSE_DONE
