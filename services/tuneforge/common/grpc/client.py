"""Client helpers: every call carries the bearer token and a deadline.

    with channel("127.0.0.1:50051", token=TOKEN) as ch:
        stub = datasets_pb2_grpc.DatasetServiceStub(ch)
        stub.GetDataset(req)            # deadline = DEFAULT_TIMEOUT_S unless timeout= is passed
"""

from __future__ import annotations

import collections
import secrets
from typing import Any

import grpc

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

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        metadata = list(d.metadata or [])
        if self._token and not any(k == "authorization" for k, _ in metadata):
            metadata.append(("authorization", f"Bearer {self._token}"))
        trace_id = current_log_context().get("trace_id", "")
        if trace_id and not any(k == "traceparent" for k, _ in metadata):
            # W3C trace context: the peer logs the same trace id (a new span id per call).
            metadata.append(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
        timeout = d.timeout if d.timeout is not None else self._timeout
        return _CallDetails(d.method, timeout, metadata, d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, cont: Any, d: Any, req: Any) -> Any:
        return cont(self._details(d), req)

    def intercept_unary_stream(self, cont: Any, d: Any, req: Any) -> Any:
        return cont(self._details(d), req)

    def intercept_stream_unary(self, cont: Any, d: Any, it: Any) -> Any:
        return cont(self._details(d), it)

    def intercept_stream_stream(self, cont: Any, d: Any, it: Any) -> Any:
        return cont(self._details(d), it)


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
