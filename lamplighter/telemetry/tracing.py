"""OpenTelemetry traces over the request path, exported over OTLP/HTTP when an endpoint is
configured (``LAMPLIGHTER_OTLP_ENDPOINT``); without one, a no-op tracer costs nothing.

Each app has its own tracer provider rather than the process-global one, so two instances in a
process (as in the tests) never mix spans. Spans follow the OpenTelemetry conventions: an HTTP
server span per request (continuing the caller's ``traceparent``), and inside a chat request a
``chat {model}`` span with the GenAI attributes and an ``admission`` span for the queue wait.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamplighter.api.middleware import logged_path


class Tracing:
    """The app's tracer, and how to flush it at shutdown."""

    def __init__(self, endpoint: str = "", service: str = "lamplighter") -> None:
        self.shutdown: Callable[[], None] = lambda: None
        if not endpoint:
            self.tracer: Tracer = trace.NoOpTracer()
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = provider.get_tracer("lamplighter")
        self.shutdown = provider.shutdown


class TraceRequests:
    """An HTTP server span around every request (the route's template names it, never the raw
    path with its ids)."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or isinstance(self.tracer, trace.NoOpTracer):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        with self.tracer.start_as_current_span(
            method,
            context=extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": logged_path(scope["path"])},
        ) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, traced_send)
            route = scope.get("route")
            if route is not None and getattr(route, "path", None):
                span.set_attribute("http.route", route.path)
                span.update_name(f"{method} {route.path}")
