"""The observing server interceptor: gRPC metrics and log correlation for every call.

Outermost in the chain (before ``ServiceInterceptor``), so it counts every call, refused ones
included (unauthenticated, over the stream cap, invalid), and sees the status code the inner
interceptor set. For each call it:
- counts ``grpc_server_started_total`` and ``grpc_server_handled_total`` (by code), observes
  ``grpc_server_handling_seconds`` and keeps ``grpc_server_in_flight`` / ``grpc_server_open_streams``
  (the names of go-grpc-prometheus, so common dashboards and alerts apply);
- binds the log correlation fields ``method``, ``request_id`` and ``trace_id`` for the handler's
  duration (``ServiceInterceptor`` adds ``tenant``). The trace id comes from a W3C ``traceparent``
  header when the caller sent one (peer calls do: ``common.grpc.client``), so one request is
  followed across services in the logs; ``x-request-id`` is honoured when well formed.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

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


class ObservingInterceptor(grpc.ServerInterceptor):
    """Records the gRPC server metrics of every call and binds its log correlation fields."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        kind = ("stream" if handler.request_streaming else "unary") + "_" + (
            "stream" if handler.response_streaming else "unary")
        call = _Call(self._m, details.method, (service, method, _GRPC_TYPE[kind]),
                     dict(details.invocation_metadata or ()),
                     handler.request_streaming or handler.response_streaming)
        behavior = getattr(handler, kind)
        new = call.streaming(behavior) if handler.response_streaming else call.unary(behavior)
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(new, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


_GRPC_TYPE = {"unary_unary": "unary", "unary_stream": "server_stream", "stream_unary": "client_stream",
              "stream_stream": "bidi_stream"}


class _Call:
    def __init__(self, metrics: ServiceMetrics, full_method: str, labels: tuple[str, str, str],
                 metadata: dict[str, Any], streaming: bool) -> None:
        self.m, self.full_method, self.labels, self.is_stream = metrics, full_method, labels, streaming
        self.request_id, self.trace_id = correlation_ids({k: v for k, v in metadata.items() if isinstance(v, str)})

    def _begin(self) -> float:
        self.m.started.labels(*self.labels).inc()
        self.m.in_flight.labels(*self.labels).inc()
        if self.is_stream:
            self.m.open_streams.labels(*self.labels).inc()
        return time.monotonic()

    def _end(self, start: float, context: grpc.ServicerContext, failed: bool) -> None:
        self.m.in_flight.labels(*self.labels).dec()
        if self.is_stream:
            self.m.open_streams.labels(*self.labels).dec()
        self.m.latency.labels(*self.labels).observe(time.monotonic() - start)
        self.m.handled.labels(*self.labels, _code(context, failed)).inc()

    def _bound(self) -> Any:
        return log_context(method=self.full_method, request_id=self.request_id, trace_id=self.trace_id)

    def unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            start, failed = self._begin(), True
            try:
                with self._bound():
                    result = behavior(request, context)
                failed = False
                return result
            finally:
                self._end(start, context, failed)
        return handle

    def streaming(self, behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start, failed = self._begin(), True
            try:
                with self._bound():
                    yield from behavior(request, context)
                failed = False
            except GeneratorExit:  # the client went away and gRPC closed the stream
                failed = False
                raise
            finally:
                self._end(start, context, failed)
        return handle


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
