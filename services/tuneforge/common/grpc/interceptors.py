"""The one server interceptor: authentication, tenant binding, error mapping and access logs.

Every handler is wrapped so that:
- the bearer token is checked (health and reflection are exempt) and the caller's ``Identity`` is
  bound for the handler's duration, streamed responses included;
- every request message (each message of a client stream too) is checked against the API-edge
  bounds of ``limits.check_request`` (string lengths, finite floats, integer range) before the
  handler sees it;
- every message sent back is bounded and carries no server path (``public_text.public_message``);
- ``TuneforgeError`` families map to status codes through ``STATUS_BY_FAMILY``; ``InvalidInput``
  carries a ``google.rpc.BadRequest`` with one field violation per bad field;
- anything else becomes INTERNAL with a generic message and an incident id; the traceback goes to
  the log only, never to the client.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tuneforge.common.auth import DEFAULT_TENANT, Identity, TokenAuthenticator, bound_identity
from tuneforge.common.errors import ErrorFamily, ResourceExhausted, TuneforgeError
from tuneforge.common.grpc.limits import check_request
from tuneforge.common.logging import log_context
from tuneforge.common.public_text import (
    MAX_DESCRIPTION_CHARS,
    MAX_FIELD_CHARS,
    clip,
    public_message,
)

log = logging.getLogger("tuneforge.rpc")

STATUS_BY_FAMILY: dict[ErrorFamily, grpc.StatusCode] = {f: grpc.StatusCode[f.value] for f in ErrorFamily}

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                   "/grpc.reflection.v1.ServerReflection/")


# Violations sent back at most (the rest are counted in the last one): status details travel in
# a trailer, and gRPC refuses trailers past its metadata limit (8 KiB by default for clients).
MAX_SENT_VIOLATIONS = 10


def to_status(err: TuneforgeError) -> status_pb2.Status:
    """Build the rich google.rpc.Status for a domain error: bounded, and with no server path."""
    code = STATUS_BY_FAMILY[err.family]
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=public_message(str(err)))
    if err.violations:
        sent = [error_details_pb2.BadRequest.FieldViolation(
            field=clip(v.field, MAX_FIELD_CHARS),
            description=public_message(v.description, MAX_DESCRIPTION_CHARS)) for v in err.violations[:MAX_SENT_VIOLATIONS]]
        if len(err.violations) > MAX_SENT_VIOLATIONS:
            sent[-1].description += f" (and {len(err.violations) - MAX_SENT_VIOLATIONS} more problems)"
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=sent))
        status.details.append(detail)
    if err.reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain="tuneforge"))
        status.details.append(info)
    return status


class StreamSlots:
    """At most ``limit`` streaming calls at once; the next one is RESOURCE_EXHAUSTED at once.

    Sync gRPC serves every call on one pool of handler threads, and a stream holds its thread for
    as long as it is open. Capping streams below the pool size keeps threads for unary calls and
    health checks whatever number of streams clients open (chosen over an asyncio server: the
    domains are synchronous, and the cap is a few lines where a port would touch every servicer).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    def take(self, method: str) -> None:
        """Take a slot or raise ``ResourceExhausted`` naming the limit and the remedy."""
        if not self._free.acquire(blocking=False):
            raise ResourceExhausted(
                f"this service already serves {self.limit} streaming calls, its limit (TUNEFORGE_MAX_STREAMS): "
                f"retry {method.rsplit('/', 1)[-1]} later or close streams you no longer read",
                reason="TOO_MANY_STREAMS")

    def give(self) -> None:
        """Return a slot."""
        self._free.release()


class ServiceInterceptor(grpc.ServerInterceptor):
    """Authenticates, binds identity, checks request bounds, caps streams, maps errors, logs each call."""

    def __init__(self, authenticator: TokenAuthenticator | None, streams: StreamSlots | None = None) -> None:
        """Args: authenticator: None disables auth (every caller is tenant 'default');
        streams: the cap on streaming calls (None: no cap)."""
        self._auth = authenticator
        self._streams = streams

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        wrap = _Wrapper(self._auth, details.method, metadata.get("authorization"), handler.request_streaming,
                        self._streams if handler.request_streaming or handler.response_streaming else None)
        kind = ("stream" if handler.request_streaming else "unary") + "_" + (
            "stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        new = wrap.streaming(behavior) if handler.response_streaming else wrap.unary(behavior)
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(new, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


class _Wrapper:
    def __init__(self, auth: TokenAuthenticator | None, method: str, authorization: str | None,
                 request_streaming: bool, streams: StreamSlots | None) -> None:
        self.auth, self.method, self.authorization = auth, method, authorization
        self.request_streaming = request_streaming
        self.streams = streams

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self.streams is None:
            yield
            return
        self.streams.take(self.method)
        try:
            yield
        finally:
            self.streams.give()

    def _identity(self) -> Identity:
        if self.auth is None:
            return Identity(DEFAULT_TENANT, "anonymous")
        return self.auth.authenticate(self.authorization)

    def unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            start, tenant = time.monotonic(), "-"
            try:
                ident = self._identity()
                tenant = ident.tenant
                if not self.request_streaming:
                    check_request(request)
                with self._slot(), bound_identity(ident), log_context(tenant=ident.tenant):
                    result = behavior(_checked(request) if self.request_streaming else request, context)
                self._log(start, tenant, "OK")
                return result
            except Exception as exc:  # noqa: BLE001 - every error is mapped, none escapes unmapped
                self._abort(exc, context, start, tenant)
        return handle

    def streaming(self, behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start, tenant = time.monotonic(), "-"
            try:
                ident = self._identity()
                tenant = ident.tenant
                if not self.request_streaming:
                    check_request(request)
                with self._slot(), bound_identity(ident), log_context(tenant=ident.tenant):
                    yield from behavior(_checked(request) if self.request_streaming else request, context)
                self._log(start, tenant, "OK")
            except Exception as exc:  # noqa: BLE001
                self._abort(exc, context, start, tenant)
        return handle

    def _abort(self, exc: Exception, context: grpc.ServicerContext, start: float, tenant: str) -> None:
        if _already_aborted(context):
            raise exc
        if isinstance(exc, TuneforgeError) and exc.family is not ErrorFamily.INTERNAL:
            status = to_status(exc)
            self._log(start, tenant, grpc.StatusCode(STATUS_BY_FAMILY[exc.family]).name, str(exc))
        else:
            incident = uuid.uuid4().hex[:12]
            log.error("internal error in %s (incident %s)", self.method, incident, exc_info=exc)
            status = status_pb2.Status(code=code_pb2.INTERNAL,
                                       message=f"internal error (incident {incident}); the details are in the "
                                               "server log")
            self._log(start, tenant, "INTERNAL", incident)
        context.abort_with_status(rpc_status.to_status(status))

    def _log(self, start: float, tenant: str, code: str, detail: str = "") -> None:
        ms = (time.monotonic() - start) * 1000
        log.info("%s %s %.1fms %s", self.method, code, ms, detail,
                 extra={"ctx_method": self.method, "ctx_code": code, "ctx_tenant": tenant,
                        "ctx_ms": round(ms, 1)})


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    """A client stream whose every message is checked against the API-edge bounds as it arrives."""
    for request in requests:
        check_request(request)
        yield request


def _already_aborted(context: grpc.ServicerContext) -> bool:
    try:
        return context.code() not in (None, grpc.StatusCode.OK)
    except Exception:  # noqa: BLE001 - older grpc without code()
        return False


def bad_request_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """Client side: the (field, description) pairs of a BadRequest in an error's status details."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: list[tuple[str, str]] = []
    for detail in status.details if status else []:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out += [(v.field, v.description) for v in br.field_violations]
    return out


