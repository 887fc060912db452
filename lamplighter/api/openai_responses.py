"""OpenAI's Responses API: ``POST /v1/responses``, whole or streamed.

A response is a chat exchange like any other (same plan, limits, queue, backends, storage and
usage); only the shapes differ. Its id names the stored answer (``resp_<hex>``, the hex of the
id that ``chatcmpl-<hex>`` names). With ``previous_response_id`` the model sees the stored path
that ends at that answer, and a new question is stored under that answer, whatever the
request's instructions (which are per request, as at OpenAI); without, the request's messages
are threaded into the tree as chat completions' are. Text, structured output, function tools
and background runs (polled, streamed and read again from where a reader left, or cancelled);
other tools are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from lamplighter.api.openai import Caller, open_exchange, whole_answer
from lamplighter.api.responses import EventStreamResponse
from lamplighter.api.schemas import ResponsesRequest, check_tool_turns, unsupported
from lamplighter.api.state import Services, State
from lamplighter.api.stored import (
    Limit,
    Order,
    answered,
    delete_stored,
    page_of,
    stop_generation,
    stored_answer,
    stored_usage,
)
from lamplighter.chat import (
    Detached,
    Exchange,
    Placement,
    Principal,
    TokenCount,
    response_id,
)
from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import GenerationRequest
from lamplighter.exceptions import APIError, InvalidRequest, NotFound
from lamplighter.store.conversations import Conversations
from lamplighter.store.models import Message

router = APIRouter(prefix="/v1")
log = logging.getLogger(__name__)

CUT_WARNING = "the server stopped before this answer was finished; its status is failed"


async def _history(state: Services, who: Principal, previous: str) -> tuple[Message, list[Turn]]:
    """The answer ``previous`` names (the caller's own, stored and finished; else 404, as at
    OpenAI, or 400 while it is still generated) and the turns of the stored path that ends at
    it. The system message its conversation starts with, where instructions are stored, is not
    carried over (OpenAI's rule: a request gives its own instructions)."""
    missing = NotFound(
        f"Previous response with id '{previous}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        answer = await stored_answer(conversations, who, previous)
        if answer is None:
            raise missing
        if answer.status == "in_progress":
            raise InvalidRequest(
                f"Previous response with id '{previous}' is still being generated; continue "
                "from it once it has finished.",
                param="previous_response_id",
                code="previous_response_in_progress",
            )
        path = await conversations.path_to(answer.id)
    return answer, [m.turn for m in _after_instructions(path)]


def _after_instructions(path: list[Message]) -> list[Message]:
    """A stored path without the system message its conversation starts with: the first
    response's instructions, which a response that continues it does not inherit."""
    return path[1:] if path and path[0].role == "system" else path


def _not_found(name: str) -> NotFound:
    return NotFound(f"Response with id '{name}' not found.", param="response_id", code="not_found")


@router.get("/responses/{name}")
async def retrieve_response(
    name: str,
    who: Caller,
    state: State,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """A stored response, as it stands (one still being generated is ``in_progress``, one its
    client left ``cancelled``). Of what the request asked for, its ``metadata``, text format,
    ``instructions`` and ``previous_response_id`` are stored (a response that began its
    conversation reads the system message it begins with as its instructions);
    ``max_output_tokens`` reads null, ``temperature`` and ``top_p`` 1.

    With ``stream=true`` its events, from the start or those numbered after
    ``starting_after``, as a background response streams them (see ``_Resumable``): what is
    stored, then, while it is generated, the text checkpointed since, to its end."""
    shape, answer = await _stored_response(state, who, name)
    if stream:
        if not answer.background:
            raise unsupported(
                "stream", "only a background response is streamed again; retrieve this one whole"
            )
        if answer.tool_calls:
            raise unsupported("stream", "a response that called tools is retrieved whole")
        return EventStreamResponse(_replay(state, who, shape, answer, starting_after))
    if starting_after is not None:
        raise InvalidRequest(
            "Invalid value for 'starting_after': it goes with stream=true.",
            param="starting_after",
        )
    return JSONResponse(_as_it_stands(shape, answer))


async def _stored_response(state: Services, who: Principal, name: str) -> tuple[_Shape, Message]:
    """A stored response's shape and its answer; NotFound when the caller has none so named."""
    async with state.db.transaction() as session:
        conversations = Conversations(session)
        answer = await stored_answer(conversations, who, name)
        if answer is None:
            raise _not_found(name)
        usage = await stored_usage(session, answer)
        instructions = answer.instructions
        if answer.previous_response_id is None:
            first = (await conversations.path_to(answer.id))[0]
            instructions = first.content if first.role == "system" else None
    stored = _Stored(
        answer.id,
        int(answer.created_at.timestamp()),
        answer.model or "",
        answer.content,
        usage,
        answer.finish_reason,
        response_format=answer.response_format,
        metadata=answer.request_metadata,
        tool_calls=answer.tool_calls,
        tools=answer.tools,
        instructions=instructions,
        previous_response_id=answer.previous_response_id,
        background=bool(answer.background),
    )
    return _Shape(stored, None, completed_at=int(answer.updated_at.timestamp())), answer


def _as_it_stands(shape: _Shape, answer: Message) -> dict[str, Any]:
    """The response object of a stored answer (``shape``'s) in its stored state."""
    if answer.status == "in_progress":
        return shape.response("in_progress")
    if answer.status == "error" or answer.finish_reason in ("shutdown", "interrupted"):
        why = "The answer was cut off by a failure before it was finished."
        return shape.response("failed", {"code": "server_error", "message": why})
    if answer.status == "cut":
        return shape.response("cancelled")  # the client left, or stopped it
    return shape.finished()


@router.get("/responses/{name}/input_items")
async def input_items(
    name: str,
    who: Caller,
    state: State,
    after: str | None = None,
    limit: Limit = 20,
    order: Order = "desc",
) -> dict[str, Any]:
    """The items a stored response was generated from (``client.responses.input_items.list``):
    its conversation from the start, as Responses items (messages, function calls and their
    outputs), newest first by default. The instructions it was generated with come first, as a
    system message: the conversation's own for a response that began it; for one that
    continued another (``previous_response_id``), that request's, if it gave any (the first
    response's are not carried over, as at OpenAI)."""
    answer, path = await answered(state, who, name, _not_found(name))
    items: list[dict[str, Any]] = []
    if answer.previous_response_id is not None:
        path = _after_instructions(path)
        if answer.instructions:
            items.append(_said(f"msg_{answer.id.hex}_instructions", "system", answer.instructions))
    items.extend(item for message in path for item in _input_items(message))
    return page_of(items, after, limit, order, name)


def _said(item_id: str, role: str, text: str) -> dict[str, Any]:
    """A message input item (a user's, or the system's)."""
    content = [{"type": "input_text", "text": text}]
    done = "completed"
    return {"type": "message", "id": item_id, "role": role, "content": content, "status": done}


def _input_items(message: Message) -> list[dict[str, Any]]:
    """A stored message as Responses items: a tool's result is a ``function_call_output``; an
    answer is its text (if any) then a ``function_call`` per call."""
    done = {"status": "completed"}
    if message.role == "tool":
        return [
            {
                "type": "function_call_output",
                "id": f"fco_{message.id.hex}",
                "call_id": message.tool_call_id or "",
                "output": message.content,
            }
            | done
        ]
    if message.role != "assistant":
        return [_said(f"msg_{message.id.hex}", message.role, message.content)]
    said: dict[str, Any] = {"type": "message", "id": f"msg_{message.id.hex}", "role": message.role}
    items = []
    if message.content or not message.tool_calls:
        items.append(said | {"content": [_Shape.part(message.content)]} | done)
    for index, call in enumerate(message.tool_calls or ()):
        function = call.get("function") or {}
        assert isinstance(function, dict)
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{message.id.hex}_{index}",
                "call_id": call.get("id", ""),
                "name": function.get("name", ""),
                "arguments": function.get("arguments", ""),
            }
            | done
        )
    return items


@router.post("/responses/{name}/cancel")
async def cancel_response(name: str, who: Caller, state: State) -> dict[str, Any]:
    """Stop a background response (``client.responses.cancel``): what was generated is kept
    and charged, and it reads ``cancelled``. One that runs on another replica is told through
    the bulletin; one already finished is returned as it is."""
    async with state.db.transaction() as session:
        answer = await stored_answer(Conversations(session), who, name)
    if answer is None:
        raise _not_found(name)
    await stop_generation(state, who, name, answer)
    return _as_it_stands(*await _stored_response(state, who, name))


@router.delete("/responses/{name}")
async def delete_response(name: str, who: Caller, state: State) -> dict[str, Any]:
    """Delete a stored response: the same as deleting the chat completion of that answer."""
    await delete_stored(state, who, name, _not_found(name))
    return {"id": name, "object": "response", "deleted": True}


@router.post("/responses")
async def create_response(
    http: Request, body: ResponsesRequest, who: Caller, state: State
) -> Response:
    given = body.turns  # the input as turns, made once
    turns: list[Turn] = []
    if body.instructions:
        turns.append(Turn("system", body.instructions))
    placement = None
    store = body.store is not False
    if body.previous_response_id is not None:
        answer, history = await _history(state, who, body.previous_response_id)
        turns.extend(history)
        if store:
            # The input goes under the answer it follows, whatever the instructions.
            placement = Placement(
                answer.conversation_id,
                answer.id,
                new_turn=True,
                fit=False,
                earlier=len(given) - 1,
                continues=answer.id,
                instructions=body.instructions,
            )
    check_tool_turns([*turns, *given], "input", before=len(turns))
    turns.extend(given)
    request = GenerationRequest(
        model=body.model,
        turns=tuple(turns),
        max_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        output_format=body.text.output_format if body.text else None,
        logprobs=body.logprobs_asked,
        **body.tool_use,
    )
    exchange, headers = await open_exchange(
        http,
        who,
        state,
        request,
        store=store,
        token_param="max_output_tokens",
        input_param="input",
        placement=placement,
        metadata=body.metadata,
    )
    shape = _Shape(exchange, body)
    if body.background:
        # Admitted (limits, queue) and stored while the client waits, so that the id it is
        # given can be polled at once; then generated whoever reads it: the client polls
        # GET /v1/responses/{id}, or cancels it, or reads it streamed, and may leave and
        # read it again from where it was (``_Resumable``).
        try:
            if exchange.opened is not None:
                await asyncio.shield(exchange.opened)
            await state.chat.writer.run(
                lambda session: Conversations(session).mark_background(exchange.message_id)
            )
        except BaseException:
            await exchange.close()
            raise
        if body.stream:
            detached = state.chat.detach(exchange, read=True, lasting=True)
            events = _streamed_in_background(state, who, shape, detached)
            return EventStreamResponse(events, headers, finally_=detached.leave)
        state.chat.detach(exchange)
        return JSONResponse(shape.response("in_progress"), headers=headers)
    if body.stream:
        return EventStreamResponse(shape.events(exchange), headers, finally_=exchange.close)
    return whole_answer(exchange, headers, shape.finished, CUT_WARNING)


# How often a response streamed again (``_replay``) on a replica that does not write it reads
# what its answer has reached, while it is generated (its text is checkpointed every second),
# and how long it waits for any more before it ends the stream: longer than a backend may go
# without a word (600 s), so only an answer stuck in its backend is given up on (a dead
# replica's are settled by the others).
REPLAY_POLL_S = 0.5
REPLAY_PATIENCE_S = 660.0
# The most characters one delta of a resumable stream holds (a URL, code, a long word).
LONGEST_DELTA = 64


def _delta_ends(text: str, start: int, *, final: bool) -> list[int]:
    """Where the deltas of ``text[start:]`` end, ``start`` being where one ended: after a word
    and the white space that follows it, once the next word has begun; after a wide character
    (Chinese, Japanese and Korean put no space between words); after ``LONGEST_DELTA``
    characters without either; and, with ``final``, at the end. Each end depends only on the
    text before it and the character after it, and the text only grows at its end: an end
    once found never moves, whenever the text is read."""
    ends: list[int] = []
    last = start
    for at in range(start + 1, len(text) + 1):
        before = text[at - 1]
        if (
            (at < len(text) and before.isspace() and not text[at].isspace())
            or unicodedata.east_asian_width(before) in ("W", "F")
            or at - last >= LONGEST_DELTA
        ):
            ends.append(at)
            last = at
    if final and last < len(text):
        ends.append(len(text))
    return ends


class _Resumable:
    """The events of a background response streamed, which can be read again (``stream=true``)
    from where its reader left.

    A reader that resumes is given the whole stream again, and skips the events numbered up
    to the last it saw (the SDK's ``responses.stream(response_id=..., starting_after=n)`` does
    so itself; with ``retrieve(..., stream=True, starting_after=n)`` this server skips them).
    So the numbers must name the same events whenever the stream is made, live or from the
    store, at any checkpoint: they are positions in the text, not counts of events sent. The
    created and in-progress events, then the message and its text part opened, are 0-3; each
    text delta (a word with the white space after it, a wide character, at most
    ``LONGEST_DELTA`` characters: ``_delta_ends``) is numbered 3 plus where it ends in the
    text; then the text's done events, the message's, and the response's last event are
    ``CLOSING`` + 1-4. Numbers increase but skip; text only (a response with tools is
    refused)."""

    HEAD = 3
    # The closing events are numbered past any position in any text: a reader who saw text
    # that the store never got (its replica died between checkpoints) still gets them.
    CLOSING = 1_000_000_000

    def __init__(self, shape: _Shape, after: int | None) -> None:
        self.shape = shape
        self.after = -1 if after is None else after
        self.sent = 0  # characters of text in the deltas so far
        self.at = {"item_id": shape.item_id, "output_index": 0, "content_index": 0}

    def _event(self, sequence: int, kind: str, **fields: Any) -> list[bytes]:
        """The event, or none when the reader has it (numbered up to ``after``)."""
        if sequence <= self.after:
            return []
        payload = {"type": kind, "sequence_number": sequence, **fields}
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return [f"event: {kind}\ndata: {data}\n\n".encode()]

    def head(self) -> list[bytes]:
        # As at the start, whatever has been generated since: nothing yet.
        started = self.shape.response("in_progress") | {"output": [], "usage": None}
        return [
            *self._event(0, "response.created", response=started),
            *self._event(1, "response.in_progress", response=started),
            *self._event(
                2,
                "response.output_item.added",
                output_index=0,
                item=self.shape.item("in_progress", None),
            ),
            *self._event(3, "response.content_part.added", **self.at, part=_Shape.part("")),
        ]

    def text(self, text: str, *, final: bool) -> list[bytes]:
        """The deltas of ``text`` (all of the answer so far) not sent yet, up to the last end
        found (``_delta_ends``), and with ``final`` the rest."""
        events: list[bytes] = []
        for end in _delta_ends(text, self.sent, final=final):
            delta = text[self.sent : end]
            self.sent = end
            events += self._event(
                self.HEAD + end, "response.output_text.delta", **self.at, delta=delta, logprobs=[]
            )
        return events

    def gone(self) -> list[bytes]:
        """The last event of a response deleted while it was streamed: an ``error``."""
        return self._event(
            self.CLOSING + 1,
            "error",
            code="not_found",
            message=f"Response with id '{self.shape.id}' was deleted.",
            param=None,
        )

    def end(self, text: str, response: dict[str, Any]) -> list[bytes]:
        """The rest of the text, the done events and the response's last (``response``: the
        response object as the answer ended)."""
        events = self.text(text, final=True)
        last = self.CLOSING
        output = response["output"]
        item = output[0] if output else self.shape.item("incomplete", text)
        part = _Shape.part(text)
        kind = {"completed": "completed", "failed": "failed"}.get(response["status"], "incomplete")
        return [
            *events,
            *self._event(last + 1, "response.output_text.done", **self.at, text=text, logprobs=[]),
            *self._event(last + 2, "response.content_part.done", **self.at, part=part),
            *self._event(last + 3, "response.output_item.done", output_index=0, item=item),
            *self._event(last + 4, f"response.{kind}", response=response),
        ]


async def _streamed_in_background(
    state: Services, who: Principal, shape: _Shape, detached: Detached
) -> AsyncIterator[bytes]:
    """A background response's stream, as it is generated. It ends as the stored answer
    ended (read once settled), so that it says what a replay of it says."""
    events = _Resumable(shape, None)
    for event in events.head():
        yield event
    exchange = detached.exchange
    with contextlib.suppress(APIError):  # the stored answer says how it failed
        async for _chunk in detached.chunks():
            for event in events.text(exchange.content, final=False):
                yield event
    for event in await _last_events(state, who, shape, events, detached):
        yield event


async def _last_events(
    state: Services, who: Principal, shape: _Shape, events: _Resumable, detached: Detached
) -> list[bytes]:
    """How the stream of an answer written here ends, once it is settled: as the stored answer
    ended, so that it says what a replay of it says; or, when it could not be stored, as this
    replica has it."""
    await asyncio.wait({detached.task})
    if not detached.task.cancelled() and detached.task.exception() is not None:
        log.error("a background response could not be stored", exc_info=detached.task.exception())
        failed = shape.finished("The answer could not be stored.")
        return events.end(detached.exchange.content, failed)
    try:
        stored, answer = await _stored_response(state, who, shape.id)
    except NotFound:
        return events.gone()
    return events.end(answer.content, _as_it_stands(stored, answer))


async def _replay(
    state: Services, who: Principal, shape: _Shape, answer: Message, after: int | None
) -> AsyncIterator[bytes]:
    """A stored response's stream from the start (the events after ``after``): what is
    stored, then the answer as it grows while it is generated: followed in memory on the
    replica that writes it, read from its checkpoints on any other."""
    events = _Resumable(shape, after)
    for event in events.head():
        yield event
    detached = state.chat.detached.get(answer.id)
    if detached is not None and answer.status == "in_progress":  # written here: followed
        async for text in detached.follow():
            for event in events.text(text, final=False):
                yield event
        for event in await _last_events(state, who, shape, events, detached):
            yield event
        return
    loop = asyncio.get_running_loop()
    text, changed = answer.content, loop.time()
    while answer.status == "in_progress":
        for event in events.text(answer.content, final=False):
            yield event
        if answer.content != text:
            text, changed = answer.content, loop.time()
        elif loop.time() - changed > REPLAY_PATIENCE_S:
            return
        await asyncio.sleep(REPLAY_POLL_S)
        try:
            shape, answer = await _stored_response(state, who, shape.id)
        except NotFound:
            for event in events.gone():
                yield event
            return
    for event in events.end(answer.content, _as_it_stands(shape, answer)):
        yield event


def _dumped(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


def _text_format(response_format: dict[str, Any] | None) -> dict[str, Any]:
    """A response's ``text.format``, from the format as chat completions (and the store) name
    it: the Responses API has a JSON schema's fields one level up."""
    if response_format is None:
        return {"type": "text"}
    if response_format["type"] == "json_schema":
        return {"type": "json_schema", **response_format["json_schema"]}
    return dict(response_format)


@dataclass(frozen=True)
class _Stored:
    """A stored answer, with what a response object needs of an exchange."""

    message_id: uuid.UUID
    created: int
    model: str
    content: str
    usage: TokenCount
    finish_reason: str | None
    interrupted: str | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # chat completions' shape, as stored
    instructions: str | None = None
    previous_response_id: uuid.UUID | None = None  # the stored answer it continued
    background: bool = False


class _Shape:
    """An answer in the Responses API's shapes: the response object and, for an exchange, its
    stream events. ``body`` is the request (None for a stored response: what of it is kept is
    in the ``_Stored``)."""

    def __init__(
        self,
        answer: Exchange | _Stored,
        body: ResponsesRequest | None,
        completed_at: int | None = None,
    ) -> None:
        self.answer: Exchange | _Stored = answer
        self.body = body
        self.completed_at = completed_at  # None: now
        self.id = response_id(answer.message_id)
        self.item_id = f"msg_{answer.message_id.hex}"
        self.sequence = 0
        # The output items in the order a stream opened them ("message", or a call's index);
        # None: the message first, then the calls.
        self.order: list[str | int] | None = None
        self._closed: set[int] = set()  # the positions in ``order`` a stream has closed
        self.instructions = body.instructions if body else None
        self.previous_response_id = body.previous_response_id if body else None
        if isinstance(answer, _Stored):
            self.response_format, self.metadata = answer.response_format, answer.metadata
            self.instructions = answer.instructions
            if answer.previous_response_id is not None:
                self.previous_response_id = response_id(answer.previous_response_id)
        else:
            output = answer.prepared.request.output_format
            self.response_format = None if output is None else output.response_format()
            self.metadata = answer.metadata

    @property
    def incomplete_reason(self) -> str | None:
        """Why the answer stopped short: the token limit, or moderation stopping it."""
        if self.answer.finish_reason == "content_filter":
            return "content_filter"
        if self.answer.finish_reason == "length":
            return "max_output_tokens"
        return None

    def finished(self, failure: str | None = None) -> dict[str, Any]:
        """The finished response. ``failure`` (the backend failed mid-answer), or a shutdown's
        cut, makes it ``failed`` with a ``server_error``; what was generated stays in it."""
        if failure is None and self.answer.interrupted is not None:
            failure = self.answer.interrupted
        if failure is not None:
            return self.response("failed", {"code": "server_error", "message": failure})
        return self.response("incomplete" if self.incomplete_reason else "completed")

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The function tools offered, in the Responses API's shape (a stored response's from
        its answer, where they are kept in chat completions' shape)."""
        if self.body is not None:
            return [tool.model_dump(exclude_none=True) for tool in self.body.tools or ()]
        stored = self.answer.tools if isinstance(self.answer, _Stored) else None
        return [{"type": "function", **tool.get("function", {})} for tool in stored or ()]

    @property
    def calls(self) -> list[dict[str, Any]]:
        answer = self.answer
        found = answer.tool_calls if isinstance(answer, _Stored) else answer.calls.calls
        return found or []

    def output(self, status: str) -> list[dict[str, Any]]:
        """The output items: the message (unless the answer only called tools), and one
        ``function_call`` item per call."""
        calls = self.calls
        order = self.order
        if order is None:
            said = bool(self.answer.content) or not calls
            order = (["message"] if said else []) + list(range(len(calls)))
        indices = sorted(entry for entry in order if isinstance(entry, int))
        return [
            self.item(status, self.answer.content)
            if isinstance(entry, str)
            else self.call_item(entry, calls[indices.index(entry)], "completed")
            for entry in order
        ]

    def call_item(self, index: int, call: dict[str, Any], status: str) -> dict[str, Any]:
        """A ``function_call`` output item of call ``index`` (OpenAI's chat shape in)."""
        function = call.get("function") or {}
        return {
            "id": f"fc_{self.answer.message_id.hex}_{index}",
            "type": "function_call",
            "status": status,
            "call_id": call.get("id", ""),
            "name": function.get("name", ""),
            "arguments": function.get("arguments", ""),
        }

    def item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self.part(text, self.logprobs)]
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @property
    def logprobs(self) -> list[dict[str, Any]]:
        """The text's tokens' log probabilities, when they were asked for (they are not
        stored: a stored response has none)."""
        answer = self.answer
        return [] if isinstance(answer, _Stored) else answer.logprobs

    @staticmethod
    def part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}

    def response(self, status: str, error: dict[str, str] | None = None) -> dict[str, Any]:
        """The response object, ``in_progress`` or finished. In progress, its output is what
        has been generated so far (a stored answer's last checkpoint): none yet, no items."""
        answer, body = self.answer, self.body
        finished = status != "in_progress"
        usage = answer.usage
        if finished:
            output = self.output("completed" if status == "completed" else "incomplete")
        else:
            output = self.output("in_progress") if answer.content or self.calls else []
        return {
            "id": self.id,
            "object": "response",
            "created_at": answer.created,
            "completed_at": (
                (self.completed_at or int(time.time())) if status == "completed" else None
            ),
            "status": status,
            "error": error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if status == "incomplete" else None
            ),
            "instructions": self.instructions,
            "max_output_tokens": body.max_output_tokens if body else None,
            "model": answer.model,
            "output": output,
            # OpenAI's default, and what a backend not told otherwise does.
            "parallel_tool_calls": body is None or body.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "store": body is None or body.store is not False,
            "background": (
                bool(body.background) if body else isinstance(answer, _Stored) and answer.background
            ),
            "temperature": body.temperature if body and body.temperature is not None else 1.0,
            "top_p": body.top_p if body and body.top_p is not None else 1.0,
            "top_logprobs": body.top_logprobs if body else None,
            "text": {"format": _text_format(self.response_format)},
            "tool_choice": _dumped(body.tool_choice if body else None) or "auto",
            "tools": self.tools,
            "truncation": "disabled",
            "metadata": self.metadata or {},
            "user": body.user if body else None,
            "usage": (
                {
                    "input_tokens": usage.prompt_tokens,
                    "input_tokens_details": {
                        "cached_tokens": usage.cached_tokens,
                        "cache_write_tokens": 0,
                    },
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

    async def events(self, exchange: Exchange) -> AsyncIterator[bytes]:
        """The stream: created, then each output item opened as it begins (the message at its
        first text, a function call at its first piece), filled (text deltas, argument
        deltas) and closed before the next one opens, as at OpenAI (function calls whose
        pieces come in turns, as parallel calls may, stay open together until the end); then
        ``response.completed`` (or ``.incomplete``) with the usage. A failure after the start
        (the backend's, or a shutdown's cut) ends it with ``response.failed``, what was
        generated and the usage in it."""
        self.order = []
        yield self.event("response.created", response=self.response("in_progress"))
        yield self.event("response.in_progress", response=self.response("in_progress"))
        chunks = exchange.stream()
        try:
            async for chunk in chunks:
                if chunk.text:
                    for opened in self._open_message():
                        yield opened
                    at = self._text_at()
                    yield self.event(
                        "response.output_text.delta",
                        **at,
                        delta=chunk.text,
                        logprobs=list(chunk.logprobs),
                    )
                for piece in chunk.tool_calls:
                    for event in self._call_piece(piece):
                        yield event
        except APIError as error:
            yield self.event("response.failed", response=self.finished(error.message))
            return
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        done = self.finished()
        if done["status"] == "failed":
            yield self.event("response.failed", response=done)
            return
        opening = self._open_message(unless_calls=True)
        if opening:  # an answer with neither text nor calls: its (empty) message is opened now
            for opened in opening:
                yield opened
            done = self.finished()
        for position, entry in enumerate(self.order):
            if position not in self._closed:
                for event in self._close(position, entry, done["output"][position]):
                    yield event
        yield self.event(f"response.{done['status']}", response=done)

    def _close(self, position: int, entry: str | int, item: dict[str, Any]) -> list[bytes]:
        """The events that close output item ``position`` (``item`` as it ends)."""
        self._closed.add(position)
        if entry == "message":
            at = self._text_at()
            text = item["content"][0]["text"]
            done = [
                self.event("response.output_text.done", **at, text=text, logprobs=self.logprobs),
                self.event("response.content_part.done", **at, part=self.part(text, self.logprobs)),
            ]
        else:
            done = [
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=position,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            ]
        return [*done, self.event("response.output_item.done", output_index=position, item=item)]

    def _close_open(self, *, calls: bool = True) -> list[bytes]:
        """Close the items still open, as they stand, before another one opens; without
        ``calls``, only the message (calls may be streamed in turns: each stays open until its
        last piece has come, which only the end tells)."""
        assert self.order is not None
        events: list[bytes] = []
        for position, entry in enumerate(self.order):
            if position in self._closed or (not calls and entry != "message"):
                continue
            if isinstance(entry, str):
                item = self.item("completed", self.answer.content)
            else:
                call = self.answer.calls.get(entry) if isinstance(self.answer, Exchange) else None
                item = self.call_item(entry, call or {}, "completed")
            events += self._close(position, entry, item)
        return events

    def _text_at(self) -> dict[str, Any]:
        assert self.order is not None
        return {
            "item_id": self.item_id,
            "output_index": self.order.index("message"),
            "content_index": 0,
        }

    def _open_message(self, *, unless_calls: bool = False) -> list[bytes]:
        """The events that open the message item and its text part, once: at the first text,
        or at the end for an answer with neither text nor calls."""
        assert self.order is not None
        if "message" in self.order or (unless_calls and self.order):
            return []
        closed = self._close_open()
        self.order.append("message")
        index = len(self.order) - 1
        return [
            *closed,
            self.event(
                "response.output_item.added",
                output_index=index,
                item=self.item("in_progress", None),
            ),
            self.event("response.content_part.added", **self._text_at(), part=self.part("")),
        ]

    def _call_piece(self, piece: dict[str, Any]) -> list[bytes]:
        """The events of one streamed piece of a call: the item opened at its first piece,
        then its arguments' delta."""
        assert self.order is not None
        index = piece.get("index", 0)
        events = []
        if index not in self.order:
            events += self._close_open(calls=False)
            self.order.append(index)
            opened = {"id": piece.get("id", ""), "function": piece.get("function") or {}}
            item = self.call_item(index, opened, "in_progress") | {"arguments": ""}
            events.append(
                self.event(
                    "response.output_item.added", output_index=len(self.order) - 1, item=item
                )
            )
        delta = (piece.get("function") or {}).get("arguments")
        # A call closed when text began (a backend that writes after its calls) says no more:
        # its arguments are whole in the response's last event.
        if delta and self.order.index(index) not in self._closed:
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=f"fc_{self.answer.message_id.hex}_{index}",
                    output_index=self.order.index(index),
                    delta=delta,
                )
            )
        return events
