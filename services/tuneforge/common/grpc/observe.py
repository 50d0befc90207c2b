"""The observing server interceptor: gRPC metrics, a trace span and log correlation for every call.

Outermost in the chain (before ``ServiceInterceptor``), so it counts every call, refused ones
included (unauthenticated, over the stream cap, invalid), and sees the status code the inner
interceptor set. For each call it:
- counts ``grpc_server_started_total`` and ``grpc_server_handled_total`` (by code), observes
  ``grpc_server_handling_seconds`` and keeps ``grpc_server_in_flight`` / ``grpc_server_open_streams``
  (the names of go-grpc-prometheus, so common dashboards and alerts apply);
- starts an OpenTelemetry SERVER span (``common.tracing``), a child of the caller's span when a W3C
  ``traceparent`` header came with the call (peer calls send one: ``common.grpc.client``), current
  for the handler's duration, ended with the call's status code (health and reflection calls get none);
- binds the log correlation fields ``method``, ``request_id`` and ``trace_id`` (the span's trace id)
  for the handler's duration (``ServiceInterceptor`` adds ``tenant``), so one request is followed
  across services in the logs and the traces; ``x-request-id`` is honoured when well formed.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from tuneforge.common import tracing
from tuneforge.common.logging import log_context
from tuneforge.common.metrics import ServiceMetrics

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def correlation_ids(metadata: dict[str, str]) -> tuple[str, str]:
    """``(request_id, trace_id)`` from the call's metadata, new ones where absent or malformed."""
    match = _TRACEPARENT.match(metadata.get("traceparent", ""))
    trace_id = match.group(1) if match and match.group(1) != "0" * 32 else uuid.uuid4().hex
    request_id = metadata.get("x-request-id", "")
    if not _REQUEST_ID.match(request_id):
        request_id = trace_id[:16]
    return request_id, trace_id


# Calls that get no span: load balancers' health checks and tools' reflection would drown the traces.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ObservingInterceptor(grpc.ServerInterceptor):
    """Records the gRPC server metrics of every call, traces it and binds its log correlation fields.

    ``intercept_service`` runs in the sync server's one polling thread, at each call's arrival and
    before any other call can be accepted, so it only finds the method's precomputed wrapper (built
    at the method's first call) and binds the call's behaviour to it; reading the metadata, the
    metrics, the span and the log fields happen in the handler's thread.
    """

    def __init__(self, metrics: ServiceMetrics, service_name: str = "") -> None:
        self._m = metrics
        self._service = service_name or metrics.service
        self._methods: dict[str, _Method] = {}

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = self._methods.get(details.method)
        if method is None:
            traced_as = "" if details.method.startswith(_UNTRACED) else self._service
            method = self._methods[details.method] = _Method(self._m, details.method, handler, traced_as)
        behavior = getattr(handler, method.kind)
        run = method.streaming if handler.response_streaming else method.unary
        return with_behavior(handler, method.kind, functools.partial(run, behavior))


def handler_kind(handler: Any) -> str:
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``: the handler's attribute
    (and grpc factory) name for its behaviour."""
    return ("stream" if handler.request_streaming else "unary") + "_" + (
        "stream" if handler.response_streaming else "unary")


def with_behavior(handler: Any, kind: str, behavior: Callable[..., Any]) -> Any:
    """``handler`` with its behaviour replaced (grpc's handlers are named tuples: a cheap copy)."""
    replace = getattr(handler, "_replace", None)
    if replace is not None:
        return replace(**{kind: behavior})
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behavior, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


# Codes that say the caller asked for something wrong or absent, not that the server failed (the
# OpenTelemetry gRPC conventions mark only these server-side codes as unset; the rest are errors).
_NOT_SERVER_ERRORS = {"OK", "CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
                      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}

_GRPC_TYPE = {"unary_unary": "unary", "unary_stream": "server_stream", "stream_unary": "client_stream",
              "stream_stream": "bidi_stream"}


class _Method:
    """What every call of one method shares: its labels, metric series (looked up once: a label
    lookup per series per call showed in the profile) and whether it streams and is traced."""

    def __init__(self, metrics: ServiceMetrics, full_method: str, handler: Any, traced_as: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.kind = handler_kind(handler)
        self.full_method, self.span_name, self.traced_as = full_method, full_method.lstrip("/"), traced_as
        self.labels = (service, method, _GRPC_TYPE[self.kind])
        self.is_stream = handler.request_streaming or handler.response_streaming
        self.m = metrics
        self.started = metrics.started.labels(*self.labels)
        self.in_flight = metrics.in_flight.labels(*self.labels)
        self.open_streams = metrics.open_streams.labels(*self.labels) if self.is_stream else None
        self.latency = metrics.latency.labels(*self.labels)
        self._handled: dict[str, Any] = {}
        self.span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
                                "tuneforge.service": traced_as}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self.m.handled.labels(*self.labels, code)
        return child

    def unary(self, behavior: Callable[..., Any], request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(self, context)
        start, failed = call.begin(), True
        try:
            with call.bound():
                result = behavior(request, context)
            failed = False
            return result
        finally:
            call.end(start, context, failed)

    def streaming(self, behavior: Callable[..., Iterator[Any]], request: Any,
                  context: grpc.ServicerContext) -> Iterator[Any]:
        call = _Call(self, context)
        start, failed = call.begin(), True
        try:
            with call.bound():
                yield from behavior(request, context)
            failed = False
        except GeneratorExit:  # the client went away and gRPC closed the stream
            failed = False
            raise
        finally:
            call.end(start, context, failed)


class _Call:
    def __init__(self, method: _Method, context: grpc.ServicerContext) -> None:
        self.method = method
        self.headers = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.request_id, self.trace_id = correlation_ids(self.headers)
        self.span: Any = None

    def begin(self) -> float:
        m = self.method
        m.started.inc()
        m.in_flight.inc()
        if m.open_streams is not None:
            m.open_streams.inc()
        if m.traced_as:
            self.span = tracing.tracer().start_span(
                m.span_name, context=tracing.extract(self.headers), kind=SpanKind.SERVER,
                attributes={**m.span_attributes, "tuneforge.request_id": self.request_id})
            self.trace_id = tracing.trace_id_hex(self.span) or self.trace_id
        return time.monotonic()

    def end(self, start: float, context: grpc.ServicerContext, failed: bool) -> None:
        m = self.method
        m.in_flight.dec()
        if m.open_streams is not None:
            m.open_streams.dec()
        m.latency.observe(time.monotonic() - start)
        code = _code(context, failed)
        m.handled(code).inc()
        if self.span is not None:
            self.span.set_attribute("rpc.grpc.status_code_name", code)
            if code not in _NOT_SERVER_ERRORS:
                tracing.set_error(self.span, code)
            self.span.end()

    @contextlib.contextmanager
    def bound(self) -> Any:
        parent = tracing.server_context(tracing.extract({}), self.span) if self.span is not None else None
        with tracing.attached(parent), log_context(method=self.method.full_method, request_id=self.request_id,
                                                   trace_id=self.trace_id):
            yield


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    """The call's status code name: the one the handler set, CANCELLED when the client left, else OK
    (UNKNOWN for an exception with no code: what gRPC sends then)."""
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a grpc without ServicerContext.code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the raw integer
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if not context.is_active():
        return "CANCELLED"
    return "UNKNOWN" if failed else "OK"
