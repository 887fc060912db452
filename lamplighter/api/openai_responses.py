"""OpenAI's Responses API: ``POST /v1/responses``, whole or streamed.

A response is a chat exchange like any other (same plan, limits, queue, backends, storage and
usage); only the shapes differ. Its id names the stored answer (``resp_<hex>``, the hex of the
id that ``chatcmpl-<hex>`` names), so ``previous_response_id`` continues a conversation from
the stored path that ends at that answer, and the conversation tree grows as with chat
completions. Text in and out only: tools, structured output and background runs are refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lamplighter.api.openai import Caller, open_exchange
from lamplighter.api.responses import DeferredJSONResponse, EventStreamResponse
from lamplighter.api.schemas import ResponsesRequest
from lamplighter.api.state import Services, State
from lamplighter.chat import Exchange, Principal, message_id_from, response_id
from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import GenerationRequest
from lamplighter.exceptions import APIError, NotFound, ShuttingDown
from lamplighter.store.conversations import Conversations

router = APIRouter(prefix="/v1")

CUT_WARNING = "the server stopped before this answer was finished; its status is incomplete"


async def _history(state: Services, who: Principal, previous: str) -> list[Turn]:
    """The turns of the stored path that ends at the answer ``previous`` names: the caller's
    own, stored answer, or 404 as at OpenAI. Its instructions are not carried over (OpenAI's
    rule): a request gives its own."""
    missing = NotFound(
        f"Previous response with id '{previous}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )
    message_id = message_id_from(previous)
    if message_id is None:
        raise missing
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        answer = await conversations.message_of(who.user_id, message_id)
        if answer is None or answer.role != "assistant":
            raise missing
        path = await conversations.path_to(answer.id)
    return [Turn(m.role, m.content) for m in path if m.role != "system"]


@router.post("/responses")
async def create_response(
    http: Request, body: ResponsesRequest, who: Caller, state: State
) -> Response:
    turns: list[Turn] = []
    if body.instructions:
        turns.append(Turn("system", body.instructions))
    if body.previous_response_id is not None:
        turns.extend(await _history(state, who, body.previous_response_id))
    turns.extend(body.turns)
    request = GenerationRequest(
        model=body.model,
        turns=tuple(turns),
        max_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
    )
    exchange, headers = await open_exchange(
        http, who, state, request, store=body.store is not False, token_param="max_output_tokens"
    )
    shape = _Shape(exchange, body)
    if body.stream:
        return EventStreamResponse(shape.events(), headers, finally_=exchange.close)

    async def produce() -> tuple[int, Any, dict[str, str]]:
        try:
            async for _ in exchange.stream():
                pass
        except APIError as error:
            return error.status_code, error.body(), error.headers
        if exchange.interrupted is not None:
            return 200, shape.response(), {"x-lamplighter-warning": CUT_WARNING}
        return 200, shape.response(), {}

    return DeferredJSONResponse(produce, headers, finally_=exchange.close)


class _Shape:
    """An exchange in the Responses API's shapes: the response object and its stream events."""

    def __init__(self, exchange: Exchange, body: ResponsesRequest) -> None:
        self.exchange = exchange
        self.body = body
        self.id = response_id(exchange.message_id)
        self.item_id = f"msg_{exchange.message_id.hex}"
        self.sequence = 0

    @property
    def incomplete_reason(self) -> str | None:
        """Why the answer is not all there: the token limit (or a shutdown's cut, which chat
        completions also report as "length"), or moderation stopping it."""
        if self.exchange.finish_reason == "content_filter":
            return "content_filter"
        if self.exchange.finish_reason == "length" or self.exchange.interrupted is not None:
            return "max_output_tokens"
        return None

    def item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self.part(text)]
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def response(self, status: str | None = None) -> dict[str, Any]:
        """The response object; without ``status``, the finished one."""
        exchange, body = self.exchange, self.body
        finished = status is None
        if status is None:
            status = "incomplete" if self.incomplete_reason else "completed"
        usage = exchange.usage
        item_status = "completed" if status == "completed" else "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": exchange.created,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "error": None,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if finished and self.incomplete_reason else None
            ),
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": exchange.model,
            "output": [self.item(item_status, exchange.content)] if finished else [],
            "parallel_tool_calls": bool(body.parallel_tool_calls),
            "previous_response_id": body.previous_response_id,
            "store": body.store is not False,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.tool_choice or "auto",
            "tools": [],
            "truncation": "disabled",
            "metadata": body.metadata or {},
            "user": body.user,
            "usage": (
                {
                    "input_tokens": usage.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": usage.completion_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": usage.total_tokens,
                }
                if finished
                else None
            ),
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    async def events(self) -> AsyncIterator[bytes]:
        """The stream: created, the item and its text part opened, the text deltas, then
        everything closed again and ``response.completed`` (or ``response.incomplete``) with
        the usage. An error after the start is an ``error`` event, as at OpenAI."""
        at = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        yield self.event("response.created", response=self.response("in_progress"))
        yield self.event("response.in_progress", response=self.response("in_progress"))
        yield self.event(
            "response.output_item.added", output_index=0, item=self.item("in_progress", None)
        )
        yield self.event("response.content_part.added", **at, part=self.part(""))
        chunks = self.exchange.stream()
        try:
            async for chunk in chunks:
                if chunk.text:
                    yield self.event(
                        "response.output_text.delta", **at, delta=chunk.text, logprobs=[]
                    )
        except APIError as error:
            yield self.event("error", code=error.code, message=error.message, param=error.param)
            return
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        text = self.exchange.content
        done = self.response()
        yield self.event("response.output_text.done", **at, text=text, logprobs=[])
        yield self.event("response.content_part.done", **at, part=self.part(text))
        yield self.event("response.output_item.done", output_index=0, item=done["output"][0])
        yield self.event(f"response.{done['status']}", response=done)
        if self.exchange.interrupted is not None:
            # After the usage, which a client reading until an error still gets.
            cut = ShuttingDown(self.exchange.interrupted, retry_after=1)
            yield self.event("error", code=cut.code, message=cut.message, param=None)
