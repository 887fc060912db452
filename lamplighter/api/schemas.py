"""Request bodies of the OpenAI-compatible API, validated by pydantic.

Unknown fields are refused (as OpenAI does), so a typo is a clear 400 rather than silently
ignored; a field we cannot honour is refused when it asks for anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import OutputFormat
from lamplighter.exceptions import InvalidRequest

# "developer" is OpenAI's newer name for "system"; the model's template knows only the latter.
ROLE_ALIASES = {"developer": "system"}
MAX_MESSAGES = 2048
NUL_IN_METADATA = "metadata cannot hold a NUL character (\\u0000)"


def _value_without_nul(value: str) -> str:
    """Refuse a NUL in a metadata value. Text elsewhere has it replaced (``models.Prose``), but
    metadata is matched exactly by ``GET /v1/chat/completions?metadata[k]=v``, and PostgreSQL
    cannot read a ``\\u0000`` out of JSON: one stored NUL would make every metadata filter of
    its owner fail."""
    if "\x00" in value:
        raise ValueError(NUL_IN_METADATA)
    return value


def _keys_without_nul(pairs: dict[str, str]) -> dict[str, str]:
    """:func:`_value_without_nul` for the keys, checked on the whole object so that the error
    names ``metadata`` rather than a key holding a NUL."""
    if any("\x00" in key for key in pairs):
        raise ValueError(NUL_IN_METADATA)
    return pairs


# OpenAI's limits on `metadata`: 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=64)],
        Annotated[str, Field(max_length=512), AfterValidator(_value_without_nul)],
    ],
    Field(max_length=16),
    AfterValidator(_keys_without_nul),
]


def _valid_text(value: object) -> object:
    """Refuse lone surrogates ("\\ud800" escapes in JSON): Python accepts them, but they are
    not Unicode, and no database (or tokenizer) can store them."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, list | tuple):
        for item in value:
            _valid_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _valid_text(key)
            _valid_text(item)
    return value


# Fields this server does not offer (``errors.UNSUPPORTED`` says why), at values that ask for
# nothing: frameworks send these defaults, and an assistant message sent back as the SDK made
# it (``message.model_dump()``) carries them. They are dropped; any other value is refused.
ASKS_NOTHING: dict[str, tuple[object, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "web_search_options": (None,),
}
# The same, on a function call sent back to the Responses API as the SDK dumps it
# (``call.model_dump()``: its Python names, at their defaults).
CALL_ASKS_NOTHING: dict[str, tuple[object, ...]] = {
    "async": (None, False),
    "async_": (None, False),
    "caller": (None, {"type": "direct"}),
    "namespace": (None,),
}
# The same, in the Responses API's ``reasoning`` (frameworks send it empty or with a null
# effort): only an effort or a summary asks for something.
REASONING_ASKS_NOTHING: dict[str, tuple[object, ...]] = {
    "effort": (None, "none"),
    "summary": (None,),
    "generate_summary": (None,),
}
# The same, on a message.
MESSAGE_ASKS_NOTHING: dict[str, tuple[object, ...]] = {
    "tool_calls": (None, []),  # an answer without calls, as the SDK dumps it
    "function_call": (None,),
    "audio": (None,),
    "annotations": (None, []),
}


def _without_defaults(data: object, defaults: dict[str, tuple[object, ...]]) -> object:
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items() if k not in defaults or v not in defaults[k]}


def _without(data: object, field: str) -> object:
    """``data`` without ``field``, at whatever value: what a client's SDK adds for itself."""
    if not isinstance(data, dict) or field not in data:
        return data
    return {k: v for k, v in data.items() if k != field}


def unsupported(param: str, why: str) -> InvalidRequest:
    """The refusal of an OpenAI parameter this server does not offer: why, not "unrecognized"."""
    return InvalidRequest(
        f"Unsupported parameter: '{param}' is not supported here: {why}.",
        param=param,
        code="unsupported_parameter",
    )


class Body(BaseModel):
    """Every request body: unknown fields refused, every string valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode(cls, value: object) -> object:
        return _valid_text(value)


class TextPart(Body):
    type: Literal["text"]
    text: str


# Structured output ---------------------------------------------------------------------------

# OpenAI's rule for a schema's name.
SCHEMA_NAME = r"^[A-Za-z0-9_-]{1,64}$"


# A schema becomes a grammar every token is sampled through, on the one thread the embedded
# model runs on: its size and depth are bounded (OpenAI's bounds are smaller still).
MAX_SCHEMA_CHARS = 120_000
MAX_SCHEMA_DEPTH = 32


def _local_refs(schema: dict[str, object] | None) -> dict[str, object] | None:
    """Refuse a schema that refers outside itself (nothing is fetched from the network), or
    one too big or too deep to follow."""
    if schema is None:
        return schema
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise ValueError(f"a schema may be at most {MAX_SCHEMA_CHARS:,} characters of JSON")
    pending: list[tuple[object, int]] = [(schema, 0)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"a schema's JSON may nest at most {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                raise ValueError(
                    f"$ref {ref!r}: only references within the schema ('#/$defs/...') are "
                    "followed; nothing is fetched"
                )
            pending.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            pending.extend((value, depth + 1) for value in node)
    return schema


class JSONSchema(Body):
    """A JSON schema the answer must follow, as chat completions' ``response_format`` carries
    it (``client.chat.completions.parse(response_format=SomeModel)`` sends one)."""

    name: str = Field(pattern=SCHEMA_NAME)
    # "schema" would shadow a BaseModel attribute.
    json_schema: dict[str, object] | None = Field(default=None, alias="schema")
    description: str | None = Field(default=None, max_length=4096)
    strict: bool | None = None

    _refs = field_validator("json_schema")(_local_refs)

    def output_format(self) -> OutputFormat:
        return output_format(self.json_schema or {}, self.name, self.description, self.strict)


class ResponseFormat(Body):
    """Chat completions' ``response_format``: text, JSON mode or a JSON schema. One model
    rather than a tagged union, so that an error names ``response_format.json_schema.name``,
    not the union's branch."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        param = "response_format.json_schema"
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
        if self.type != "json_schema" and self.json_schema is not None:
            raise InvalidRequest(f"'{param}' is only for type 'json_schema'.", param=param)
        return self

    @property
    def output_format(self) -> OutputFormat | None:
        if self.json_schema is not None:
            return self.json_schema.output_format()
        return output_format(None) if self.type == "json_object" else None


def output_format(
    schema: dict[str, object] | None,
    name: str = "response",
    description: str | None = None,
    strict: bool | None = None,
) -> OutputFormat:
    """The engines' form of a structured-output request: the schema as compact JSON text (None
    for JSON mode). Its keys keep their order: a schema's properties are generated in it."""
    text = None if schema is None else json.dumps(schema, separators=(",", ":"))
    return OutputFormat(schema=text, name=name, description=description, strict=bool(strict))


# Tool use ------------------------------------------------------------------------------------

# OpenAI's rule for a function's name.
TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128


class FunctionDefinition(Body):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None

    _refs = field_validator("parameters")(_local_refs)


class ToolDefinition(Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Body):
    name: str = Field(pattern=TOOL_NAME)


class NamedToolChoice(Body):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(Body):
    name: str = Field(max_length=64)
    arguments: str

    @model_validator(mode="before")
    @classmethod
    def _drop_parsed(cls, data: object) -> object:
        # The SDK's parse and stream helpers add the arguments they parsed.
        return _without(data, "parsed_arguments")


class ToolCall(Body):
    """A call an assistant message made, as a client sends the conversation back."""

    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"]
    function: FunctionCall

    @model_validator(mode="before")
    @classmethod
    def _drop_index(cls, data: object) -> object:
        # A call put together from streamed pieces keeps the pieces' ``index``.
        return _without(data, "index")


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=256)] | None = None
    name: str | None = Field(default=None, max_length=64)
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _drop_defaults(cls, data: object) -> object:
        # ``parsed``: what the SDK's parse and stream helpers parsed of the answer, sent back
        # with it.
        return _without(_without_defaults(data, MESSAGE_ASKS_NOTHING), "parsed")

    def turn(self) -> Turn:
        turn = _turn(self.role, self.content)
        if self.tool_calls:
            calls = [call.model_dump() for call in self.tool_calls]
            return replace(turn, tool_calls=_compact(calls))
        if self.tool_call_id is not None:
            return replace(turn, tool_call_id=self.tool_call_id)
        return turn


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class StreamOptions(Body):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # nothing here is obfuscated


# The current SDK's hints for OpenAI's prompt cache, accepted and not used: prefix affinity
# already sends a conversation back to the backend that holds its prefix, for as long as it does.
PromptCacheKey = Annotated[str | None, Field(max_length=256)]
PromptCacheRetention = Literal["in_memory", "24h"] | None
# A stable id of the client's own end user, as ``user`` is: accepted, not used yet.
SafetyIdentifier = Annotated[str | None, Field(max_length=256)]
# Asks a reasoning model for shorter or longer answers; the models here have no such setting.
Verbosity = Literal["low", "medium", "high"] | None


class ChatCompletionRequest(Body):
    model: str = Field(min_length=1, max_length=200)
    # The body limit bounds the total size; this bounds the work per message (threading hashes
    # every one of them).
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: SafetyIdentifier = None
    prompt_cache_key: PromptCacheKey = None
    prompt_cache_retention: PromptCacheRetention = None
    verbosity: Verbosity = None
    store: bool | None = None
    metadata: Metadata | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_defaults(cls, data: object) -> object:
        return _without_defaults(data, ASKS_NOTHING)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        for index, message in enumerate(self.messages):
            # Only an assistant's message may leave its content out (OpenAI's rule: there it
            # may carry tool calls instead); anyone else's missing content is a mistake.
            if message.role != "assistant" and "content" not in message.model_fields_set:
                param = f"messages[{index}].content"
                raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
            _check_tool_message(index, message)
        choice = self.tool_choice
        _check_tools(
            [tool.function.name for tool in self.tools or ()],
            choice.function.name if isinstance(choice, NamedToolChoice) else choice,
        )
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise InvalidRequest("'stop' takes at most 4 sequences", param="stop")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest(
                "Invalid value for 'top_logprobs': 'logprobs' must be true to ask for them.",
                param="top_logprobs",
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when 'stream' is true", param="stream_options"
            )
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens

    @property
    def output_format(self) -> OutputFormat | None:
        return self.response_format.output_format if self.response_format else None

    @property
    def logprobs_asked(self) -> int | None:
        """How many alternatives each token's log probability comes with (0: none), or None
        when log probabilities are not asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def tool_use(self) -> dict[str, Any]:
        """The request's tools, as ``GenerationRequest`` takes them (none for ``tools: []``)."""
        if not self.tools:
            return {}
        choice = self.tool_choice
        return {
            "tools": _compact([tool.model_dump(exclude_none=True) for tool in self.tools]),
            "tool_choice": None
            if choice is None
            else _compact(choice if isinstance(choice, str) else choice.model_dump()),
            "parallel_tool_calls": self.parallel_tool_calls,
        }


class CompletionUpdate(Body):
    """``POST /v1/chat/completions/{id}``: a stored completion's new metadata."""

    metadata: Metadata | None


# OpenAI's Responses API --------------------------------------------------------------------------


class ResponseTextPart(Body):
    # A client sending a response's output back as input sends "output_text" parts, with their
    # (empty) annotations and logprobs.
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[object] | None = None
    logprobs: list[object] | None = None


class ResponseInputMessage(Body):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[ResponseTextPart], Field(max_length=256)]
    # Set on a response's output item sent back as input (the SDK asks to send them back);
    # not needed to place it.
    id: str | None = Field(default=None, max_length=200)
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def turn(self) -> Turn:
        return _turn(self.role, self.content)


class TextFormat(Body):
    """The Responses API's ``text.format``: text, JSON mode, or a JSON schema with chat
    completions' fields one level up (``client.responses.parse(text_format=...)`` sends one)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=SCHEMA_NAME)
    json_schema: dict[str, object] | None = Field(default=None, alias="schema")
    description: str | None = Field(default=None, max_length=4096)
    strict: bool | None = None

    _refs = field_validator("json_schema")(_local_refs)

    @model_validator(mode="after")
    def _check(self) -> TextFormat:
        given = self.model_fields_set - {"type"}
        if self.type != "json_schema" and given:
            field = "schema" if "json_schema" in given else sorted(given)[0]
            raise InvalidRequest(
                f"'text.format.{field}' is only for type 'json_schema'.",
                param=f"text.format.{field}",
            )
        for field, value in (("name", self.name), ("schema", self.json_schema)):
            if self.type == "json_schema" and value is None:
                raise InvalidRequest(
                    f"Missing required parameter: 'text.format.{field}'.",
                    param=f"text.format.{field}",
                )
        return self


class TextConfig(Body):
    format: TextFormat | None = None
    verbosity: Verbosity = None

    @property
    def output_format(self) -> OutputFormat | None:
        found = self.format
        if found is None or found.type == "text":
            return None
        if found.type == "json_object":
            return output_format(None)
        return output_format(
            found.json_schema, found.name or "response", found.description, found.strict
        )


class ResponsesStreamOptions(Body):
    include_obfuscation: bool | None = None  # nothing here is obfuscated


class FunctionCallItem(Body):
    """A call a response made, sent back as input (or written by the client)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=200)
    name: str = Field(max_length=64)
    arguments: str
    id: str | None = Field(default=None, max_length=200)
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_defaults(cls, data: object) -> object:
        return _without_defaults(data, CALL_ASKS_NOTHING)


class FunctionCallOutputItem(Body):
    """A tool's result, for the call ``call_id`` names."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=200)
    output: str
    id: str | None = Field(default=None, max_length=200)
    status: Literal["in_progress", "completed", "incomplete"] | None = None


# What a response may ``include`` beyond its text.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# The input items offered, by their "type" (a message may leave it out).
INPUT_ITEMS = ("message", "function_call", "function_call_output")


def _item_kind(item: object) -> str:
    kind = item.get("type") if isinstance(item, dict) else getattr(item, "type", None)
    return kind if isinstance(kind, str) else "message"


InputItem = Annotated[
    Annotated[ResponseInputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class ResponsesFunctionTool(Body):
    """A function tool as the Responses API describes one (chat completions' fields, one level
    up)."""

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None

    _refs = field_validator("parameters")(_local_refs)


class ResponsesNamedToolChoice(Body):
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)


class ResponsesRequest(Body):
    model: str = Field(min_length=1, max_length=200)
    input: str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)]
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, max_length=200)
    max_output_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool | None = None
    metadata: Metadata | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: SafetyIdentifier = None
    prompt_cache_key: PromptCacheKey = None
    prompt_cache_retention: PromptCacheRetention = None
    service_tier: Literal["auto", "default"] | None = None
    text: TextConfig | None = None
    truncation: Literal["disabled"] | None = None
    tools: list[ResponsesFunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted at their defaults, which ask for nothing this server cannot do; refused (below)
    # when they ask for more. Frameworks send the defaults.
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning: dict[str, object] | None = None
    background: bool | None = None
    conversation: object | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: object) -> object:
        """Say plainly that input other than text messages and function calls is not
        offered (pydantic would say "Input should be a valid string" of an image part), nor
        tools other than functions."""
        tools = data.get("tools") if isinstance(data, dict) else None
        for tool in tools if isinstance(tools, list) else []:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise unsupported("tools", f"only function tools are offered, not '{kind}'")
        items = data.get("input") if isinstance(data, dict) else None
        for index, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            kind = item.get("type", "message")
            if kind not in INPUT_ITEMS:
                raise InvalidRequest(
                    f"Invalid value for 'input[{index}].type': only messages, function calls "
                    f"and their outputs are supported here, not '{kind}'.",
                    param=f"input[{index}].type",
                )
            parts = item.get("content")
            for at, part in enumerate(parts if isinstance(parts, list) else []):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind not in ("input_text", "output_text"):
                    param = f"input[{index}].content[{at}].type"
                    raise InvalidRequest(
                        f"Invalid value for '{param}': only text parts (input_text, "
                        f"output_text) are supported here, not '{kind}'.",
                        param=param,
                    )
        return data

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        refused = {
            "include": (
                f"only {LOGPROBS_INCLUDE} can be included",
                any(item != LOGPROBS_INCLUDE for item in self.include or ()),
            ),
            "reasoning": (
                "the models here do not reason in separate steps",
                bool(_without_defaults(self.reasoning or {}, REASONING_ASKS_NOTHING)),
            ),
            "tools": (
                "a background response is streamed as text; poll one that calls tools with "
                "GET /v1/responses/{id}",
                bool(self.background and self.stream and self.tools),
            ),
            "top_logprobs": (
                "a background response is streamed as text, without log probabilities",
                bool(self.background and self.stream and self.logprobs_asked is not None),
            ),
            "conversation": (
                "continue a conversation with previous_response_id",
                self.conversation is not None,
            ),
        }
        for param, (why, asked) in refused.items():
            if asked:
                raise unsupported(param, why)
        if self.background and self.store is False:
            raise InvalidRequest(
                "Invalid value for 'store': a background response is stored, to be polled.",
                param="store",
            )
        choice = self.tool_choice
        _check_tools(
            [tool.name for tool in self.tools or ()],
            choice.name if isinstance(choice, ResponsesNamedToolChoice) else choice,
        )
        return self

    @property
    def turns(self) -> tuple[Turn, ...]:
        """The input as turns; a plain string is one user message. Function calls in a row
        are one assistant turn's calls (with the text of an assistant message just before
        them), as chat completions have them; a call's output is a "tool" turn."""
        if isinstance(self.input, str):
            return (Turn("user", self.input),)
        turns: list[Turn] = []
        calls: list[dict[str, Any]] = []
        for item in self.input:
            if isinstance(item, FunctionCallItem):
                calls.append(
                    {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments},
                    }
                )
                continue
            if calls:
                turns.append(_with_calls(turns, calls))
                calls = []
            if isinstance(item, FunctionCallOutputItem):
                turns.append(Turn("tool", item.output, tool_call_id=item.call_id))
            else:
                turns.append(item.turn())
        if calls:
            turns.append(_with_calls(turns, calls))
        return tuple(turns)

    @property
    def logprobs_asked(self) -> int | None:
        """How many alternatives each token's log probability comes with, or None when they
        are not asked for (neither included nor ``top_logprobs`` given)."""
        if LOGPROBS_INCLUDE in (self.include or ()) or self.top_logprobs is not None:
            return self.top_logprobs or 0
        return None

    @property
    def tool_use(self) -> dict[str, Any]:
        """The request's tools in chat completions' form, as ``GenerationRequest`` takes them."""
        if not self.tools:
            return {}
        tools = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in self.tools
        ]
        choice = self.tool_choice
        if isinstance(choice, ResponsesNamedToolChoice):
            named: object = {"type": "function", "function": {"name": choice.name}}
        else:
            named = choice
        return {
            "tools": _compact(tools),
            "tool_choice": None if named is None else _compact(named),
            "parallel_tool_calls": self.parallel_tool_calls,
        }


def _with_calls(turns: list[Turn], calls: list[dict[str, Any]]) -> Turn:
    """An assistant turn making ``calls``: the assistant message just before them, if they
    follow one (taken off ``turns``), else one with no text."""
    said = (
        turns.pop()
        if turns and turns[-1].role == "assistant" and not turns[-1].tool_calls
        else None
    )
    return Turn("assistant", said.content if said else "", tool_calls=_compact(calls))


def _check_tools(names: list[str], choice: str | None) -> None:
    """Tools have distinct names; a ``tool_choice`` that asks for a call needs tools, and a
    named one (``choice`` is its name) must be among them."""
    if len(set(names)) != len(names):
        raise InvalidRequest("Two tools in 'tools' have the same name.", param="tools")
    if choice in (None, "none", "auto"):
        return
    if not names:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    if choice != "required" and choice not in names:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': no tool named '{choice}' is among 'tools'.",
            param="tool_choice",
        )


def check_tool_turns(turns: Sequence[Turn], where: str = "messages", before: int = 0) -> None:
    """Tool results answer calls, as at OpenAI: a "tool" turn answers a call of the assistant
    turn before it (past the other results), and every call is answered before the
    conversation goes on. Errors name ``where[i]``, ``i`` counted after the first ``before``
    turns (a stored conversation the request continues, named ``previous_response_id``)."""
    if not any(turn.role == "tool" or turn.tool_calls for turn in turns):
        return

    def param(index: int, field: str) -> str:
        return f"{where}[{index - before}].{field}" if index >= before else "previous_response_id"

    asked: dict[str, int] = {}  # calls not answered yet -> the turn that made them
    for index, turn in enumerate(turns):
        if turn.role == "tool":
            if turn.tool_call_id not in asked:
                name = param(index, "tool_call_id")
                raise InvalidRequest(
                    f"Invalid value for '{name}': a tool's message must answer a call of the "
                    f"assistant message before it, and no call there has the id "
                    f"'{turn.tool_call_id}' (or it was answered already).",
                    param=name,
                )
            del asked[turn.tool_call_id]
            continue
        if asked:
            break
        if turn.tool_calls is not None:
            asked = {call.get("id", ""): index for call in json.loads(turn.tool_calls)}
    if asked:
        name = param(next(iter(asked.values())), "tool_calls")
        raise InvalidRequest(
            "An assistant message with 'tool_calls' must be followed by tool messages answering "
            f"each call; these had none: {', '.join(asked)}.",
            param=name,
        )


def _check_tool_message(index: int, message: ChatMessage) -> None:
    """A tool's message answers one call, named by ``tool_call_id``; only an assistant's
    message makes calls."""
    if message.role == "tool" and message.tool_call_id is None:
        param = f"messages[{index}].tool_call_id"
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    if message.role != "tool" and message.tool_call_id is not None:
        param = f"messages[{index}].tool_call_id"
        raise InvalidRequest(f"'{param}' is only for a message of role 'tool'.", param=param)
    if message.role != "assistant" and message.tool_calls:
        param = f"messages[{index}].tool_calls"
        raise InvalidRequest(f"'{param}' is only for a message of role 'assistant'.", param=param)


def _turn(role: str, content: str | list[TextPart] | list[ResponseTextPart] | None) -> Turn:
    """A message as a turn: its text parts joined, its role by the name the model knows."""
    text = "".join(part.text for part in content) if isinstance(content, list) else content
    return Turn(ROLE_ALIASES.get(role, role), text or "")
