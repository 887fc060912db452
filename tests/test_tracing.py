"""Traces reach a real OTLP/HTTP receiver, continue the caller's trace, and name the GenAI
attributes; the receiver here is a small server that decodes what the exporter sends."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import SCRIPTED, LiveServer, ThreadedServer, free_port, make_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def receiver(spans: list[dict[str, Any]]) -> Starlette:
    async def traces(request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return Response(body, media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def test_a_chat_request_is_traced_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spans: list[dict[str, Any]] = []

    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    with ThreadedServer(receiver(spans), free_port()) as collector:
        settings = make_settings(tmp_path, embedded_engine=False, otlp_endpoint=collector.base_url)
        with LiveServer(settings, backends) as live:
            _, key = live.new_user(plan="team")
            client = live.client(key)
            client.chat.completions.create(
                model=SCRIPTED,
                messages=[{"role": "user", "content": "trace me"}],
                extra_headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
            )
            with pytest.raises(openai.AuthenticationError):
                live.client("ll-wrong").models.list()
            live.close_clients()
            token = live.call(lambda s: s.web.invite("traced@example.org", "team"))
            assert httpx.get(f"{live.base_url}/invite/{token}").status_code == 200
        # Leaving the server flushed the batch to the collector.

    by_name = {span["name"]: span for span in spans}
    server = by_name["POST /v1/chat/completions"]
    chat = by_name[f"chat {SCRIPTED}"]
    admission = by_name["admission"]
    assert server["trace_id"] == chat["trace_id"] == admission["trace_id"] == TRACE_ID
    assert server["parent"] == "00f067aa0ba902b7"  # the caller's span
    assert chat["parent"] == server["span_id"] and admission["parent"] == chat["span_id"]
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["http.route"] == "/v1/chat/completions"
    attributes = chat["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == SCRIPTED
    assert attributes["gen_ai.usage.output_tokens"] == 4  # "You said: trace me"
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert (
        attributes["lamplighter.plan"] == "team" and attributes["lamplighter.outcome"] == "complete"
    )
    assert by_name["GET /v1/models"]["attributes"]["http.response.status_code"] == 401
    assert not any("trace me" in str(span["attributes"]) for span in spans)
    # A password link's token is no more in a trace than in the access log.
    assert by_name["GET /invite/{token}"]["attributes"]["url.path"] == "/invite/…"
    assert not any(token in str(span) for span in spans)
