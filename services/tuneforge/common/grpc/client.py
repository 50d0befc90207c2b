"""Client helpers: every call carries the bearer token, a deadline and the trace context.

Each call is a CLIENT span (``common.tracing``), a child of the current span (the server span of the
call being served, or a background run's), whose W3C ``traceparent`` goes with the call: the peer's
server span is its child, so one request is one trace across services.

    with channel("127.0.0.1:50051", token=TOKEN) as ch:
        stub = datasets_pb2_grpc.DatasetServiceStub(ch)
        stub.GetDataset(req)            # deadline = DEFAULT_TIMEOUT_S unless timeout= is passed
"""

from __future__ import annotations

import collections
import secrets
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tuneforge.common import tracing
from tuneforge.common.logging import current_log_context

DEFAULT_TIMEOUT_S = 30.0


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _AuthDeadlineInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str | None, default_timeout: float) -> None:
        self._token, self._timeout = token, default_timeout

    def _details(self, d: grpc.ClientCallDetails, span: trace.Span) -> _CallDetails:
        metadata = list(d.metadata or [])
        if self._token and not any(k == "authorization" for k, _ in metadata):
            metadata.append(("authorization", f"Bearer {self._token}"))
        if not any(k == "traceparent" for k, _ in metadata):
            headers: dict[str, str] = {}
            with tracing.attached(trace.set_span_in_context(span)):
                tracing.inject(headers)
            trace_id = current_log_context().get("trace_id", "")
            if "traceparent" not in headers and trace_id:
                # No tracer in this process: the peer still logs the same trace id (a new span id per call).
                headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
            metadata += list(headers.items())
        timeout = d.timeout if d.timeout is not None else self._timeout
        return _CallDetails(d.method, timeout, metadata, d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def _call(self, cont: Any, d: Any, arg: Any) -> Any:
        """Run the call inside a CLIENT span that ends when the call does (a stream: when it closes)."""
        service, _, method = d.method.lstrip("/").rpartition("/")
        span = tracing.tracer().start_span(d.method.lstrip("/"), kind=SpanKind.CLIENT, attributes={
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        try:
            result = cont(self._details(d, span), arg)
        except BaseException:
            span.end()
            raise
        result.add_done_callback(lambda call: _end_client_span(span, call))
        return result

    def intercept_unary_unary(self, cont: Any, d: Any, req: Any) -> Any:
        return self._call(cont, d, req)

    def intercept_unary_stream(self, cont: Any, d: Any, req: Any) -> Any:
        return self._call(cont, d, req)

    def intercept_stream_unary(self, cont: Any, d: Any, it: Any) -> Any:
        return self._call(cont, d, it)

    def intercept_stream_stream(self, cont: Any, d: Any, it: Any) -> Any:
        return self._call(cont, d, it)


def _end_client_span(span: trace.Span, call: Any) -> None:
    failure = call.exception() if hasattr(call, "exception") else None
    if isinstance(failure, grpc.Call):  # a failed blocking call: its own error holds the real code
        call = failure
    code = call.code() if hasattr(call, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    span.set_attribute("rpc.grpc.status_code_name", name)
    if name != "OK":  # the client side of the conventions: every non-OK code is an error
        tracing.set_error(span, name, call.details() if hasattr(call, "details") else "")
    span.end()


def channel(address: str, token: str | None = None, *, default_timeout: float = DEFAULT_TIMEOUT_S,
            max_message_bytes: int = 16 << 20) -> grpc.Channel:
    """An insecure channel (TLS terminates at the mesh/ingress) that adds auth and deadlines.

    Args:
        address: host:port.
        token: bearer token, or None for health/reflection only.
        default_timeout: deadline in seconds for calls that pass none. Streams that follow a long job
            should pass a larger ``timeout=`` explicitly.
    """
    raw = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", max_message_bytes),
                                                  ("grpc.max_send_message_length", max_message_bytes)])
    return grpc.intercept_channel(raw, _AuthDeadlineInterceptor(token, default_timeout))
