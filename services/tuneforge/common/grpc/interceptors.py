"""The one server interceptor: authentication, tenant binding, error mapping and access logs.

Every handler is wrapped so that:
- the bearer token is checked (health and reflection are exempt) and the caller's ``Identity`` is
  bound for the handler's duration, streamed responses included;
- every request message (each message of a client stream too) is checked against the API-edge
  bounds of ``limits.check_request`` (string lengths, finite floats, integer range) before the
  handler sees it;
- every message sent back is bounded and carries no server path (``public_text.public_message``);
- calls are admitted only while handler threads are left for health checks (``Admission``:
  calls and streams capped, RESOURCE_EXHAUSTED past the caps);
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
from opentelemetry import trace

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
        info.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain="tuneforge",
                                              metadata={clip(k, 64): clip(v, 256) for k, v in err.metadata.items()}))
        status.details.append(info)
    return status


class Admission:
    """Admission control on the handler threads: no request can take the last ones.

    Sync gRPC serves every call on one pool of handler threads, and a call holds its thread until
    it ends (a stream for as long as it is open). So at most ``calls`` calls run at once (the
    threads left over serve health checks, which are admitted without a slot), of which at most
    ``streams`` are streaming; past either, a call is RESOURCE_EXHAUSTED at once instead of waiting
    in gRPC's queue behind the calls that hold the threads. (Chosen over an asyncio server: the
    domains are synchronous, and admission is one place where a port would touch every servicer.)
    """

    def __init__(self, calls: int, streams: int) -> None:
        self.calls, self.streams = calls, min(streams, calls)
        self._calls = threading.BoundedSemaphore(self.calls)
        self._streams = threading.BoundedSemaphore(self.streams)

    @contextlib.contextmanager
    def admit(self, method: str, streaming: bool) -> Iterator[None]:
        """Hold a call slot (and a stream slot) for a ``with`` block; ``ResourceExhausted`` if none."""
        self.enter(method, streaming)
        try:
            yield
        finally:
            self.leave(streaming)

    def enter(self, method: str, streaming: bool) -> None:
        """Take the slots of a call, or raise ``ResourceExhausted`` naming the limit and the remedy."""
        name = method.rsplit("/", 1)[-1]
        if streaming and not self._streams.acquire(blocking=False):
            raise ResourceExhausted(
                f"this service already serves {self.streams} streaming calls, its limit (TUNEFORGE_MAX_STREAMS): "
                f"retry {name} later or close streams you no longer read", reason="TOO_MANY_STREAMS")
        if not self._calls.acquire(blocking=False):
            if streaming:
                self._streams.release()
            raise ResourceExhausted(
                f"this service is serving {self.calls} calls, its limit (TUNEFORGE_MAX_WORKERS less the threads "
                f"kept for health checks): retry {name} later", reason="TOO_MANY_CALLS")

    def leave(self, streaming: bool) -> None:
        """Give back the slots ``enter`` took."""
        self._calls.release()
        if streaming:
            self._streams.release()


class ServiceInterceptor(grpc.ServerInterceptor):
    """Authenticates, binds identity, checks request bounds, caps streams, maps errors, logs each call."""

    def __init__(self, authenticator: TokenAuthenticator | None, admission: Admission | None = None) -> None:
        """Args: authenticator: None disables auth (every caller is tenant 'default');
        admission: the caps on calls and streams (None: no cap)."""
        self._auth = authenticator
        self._admission = admission

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return handler
        if details.method.startswith(EXEMPT_PREFIXES):
            # No token needed, but health Watch and reflection streams pin threads too: capped.
            return self._capped(handler, details.method) if handler.response_streaming else handler
        metadata = dict(details.invocation_metadata or ())
        wrap = _Wrapper(self._auth, details.method, metadata.get("authorization"), handler.request_streaming,
                        self._admission)
        kind = ("stream" if handler.request_streaming else "unary") + "_" + (
            "stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        new = wrap.streaming(behavior) if handler.response_streaming else wrap.unary(behavior)
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(new, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


    def _capped(self, handler: Any, method: str) -> Any:
        """An exempt streaming handler that takes call and stream slots (RESOURCE_EXHAUSTED when none is free)."""
        if self._admission is None:
            return handler
        admission = self._admission
        kind = ("stream" if handler.request_streaming else "unary") + "_stream"
        behavior = getattr(handler, kind)

        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                admission.enter(method, streaming=True)
            except ResourceExhausted as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
            try:
                yield from behavior(request, context)
            finally:
                admission.leave(streaming=True)
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(handle, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


class _Wrapper:
    def __init__(self, auth: TokenAuthenticator | None, method: str, authorization: str | None,
                 request_streaming: bool, admission: Admission | None) -> None:
        self.auth, self.method, self.authorization = auth, method, authorization
        self.request_streaming = request_streaming
        self.admission = admission

    def _slot(self, streaming: bool) -> contextlib.AbstractContextManager[None]:
        if self.admission is None:
            return contextlib.nullcontext()
        return self.admission.admit(self.method, streaming)

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
                trace.get_current_span().set_attribute("tuneforge.tenant", ident.tenant)
                with self._slot(self.request_streaming), bound_identity(ident), log_context(tenant=ident.tenant):
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
                trace.get_current_span().set_attribute("tuneforge.tenant", ident.tenant)
                with self._slot(True), bound_identity(ident), log_context(tenant=ident.tenant):
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


