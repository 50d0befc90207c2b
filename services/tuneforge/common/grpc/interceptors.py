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
import functools
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
from tuneforge.common.grpc.observe import handler_kind, with_behavior
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


# How long every call must have started later than the queueing target before calls that find a
# free slot are shed too (10 x the default target: CoDel's interval, lengthened for shared machines).
SUSTAINED_LATE_S = 1.0


class Admission:
    """Admission control on the handler threads: no request can take the last ones, and unary work
    that cannot start within the queueing target is refused rather than left to time out.

    Sync gRPC serves every call on one pool of handler threads, and a call holds its thread until
    it ends (a stream for as long as it is open). So at most ``calls`` calls run at once (the
    threads left over serve health checks, which are admitted without a slot), of which at most
    ``streams`` are streaming; past either, a call is RESOURCE_EXHAUSTED at once instead of waiting
    in gRPC's queue behind the calls that hold the threads. (Chosen over an asyncio server: the
    domains are synchronous, and admission is one place where a port would touch every servicer.)

    Unary calls then run at most ``active`` at a time (0: no bound). Their work is mostly CPU in
    one Python process: past a few runnable threads more only share the GIL, each call gets
    slower, and the server's one polling thread (which accepts every call, health checks included)
    waits for the GIL among them. When every active slot is taken, a unary call waits for one only
    until ``queue_target_s`` after its arrival (counted from when the polling thread handed it
    over, so time spent waiting for a thread or the GIL counts too); a call that could not start by
    then is RESOURCE_EXHAUSTED (reason ``OVERLOADED``) in well under its deadline, so above capacity
    clients are told to back off instead of timing out, and what is admitted keeps its latency
    (CoDel's idea: shed on queueing delay, not on queue length). A free slot admits, unless calls
    have been starting late for ``SUSTAINED_LATE_S`` without a break (a standing queue).
    """

    def __init__(self, calls: int, streams: int, active: int = 0, queue_target_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.calls, self.streams = calls, min(streams, calls)
        self.active, self.queue_target_s = active, queue_target_s
        self._clock = clock
        self._late_since: float | None = None  # since when every call has started later than the target
        self._last_late: float | None = None  # the latest call that started later than the target
        self._late_lock = threading.Lock()
        self._calls = threading.BoundedSemaphore(self.calls)
        self._streams = threading.BoundedSemaphore(self.streams)
        self._active = threading.BoundedSemaphore(active) if active > 0 else None

    @contextlib.contextmanager
    def admit(self, method: str, streaming: bool, arrived: float | None = None) -> Iterator[None]:
        """Hold a call slot (and a stream slot, or for unary work an active slot) for a ``with``
        block; ``ResourceExhausted`` if none. ``arrived``: the call's arrival (``time.monotonic``)."""
        self.enter(method, streaming)
        try:
            active = not streaming and self._start(method, arrived)
            try:
                yield
            finally:
                if active:
                    self._active.release()  # type: ignore[union-attr]
        finally:
            self.leave(streaming)

    def _start(self, method: str, arrived: float | None) -> bool:
        """Take an active slot, waiting until the queueing target; whether one was taken."""
        if self._active is None:
            return False
        if self.queue_target_s <= 0 or arrived is None:
            self._active.acquire()
            return True
        now = self._clock()
        if not self._persistently_late(now - arrived, now) and self._active.acquire(blocking=False):
            return True
        waited = now - arrived
        if waited < self.queue_target_s and self._active.acquire(timeout=self.queue_target_s - waited):
            return True
        waited = self._clock() - arrived
        raise ResourceExhausted(
            f"this service is overloaded: {method.rsplit('/', 1)[-1]} waited {waited * 1000:.0f} ms to start, past "
            f"its queueing target of {self.queue_target_s * 1000:.0f} ms (TUNEFORGE_QUEUE_TARGET_MS): retry with "
            "backoff, or add replicas", reason="OVERLOADED")

    def _persistently_late(self, waited: float, now: float) -> bool:
        """Whether calls have started later than the target for ``SUSTAINED_LATE_S`` without a break
        (CoDel's test: the smallest delay over an interval, not one late call, marks a standing
        queue). Then even a call that finds a free slot is shed: a process whose GIL is saturated
        starts calls late before its slots fill. A single late call (a loaded CI runner, a pause)
        runs."""
        with self._late_lock:  # handler threads race here: read and write the window together
            if waited < self.queue_target_s:
                self._late_since = self._last_late = None
                return False
            # A break in lateness (no late call for a while, e.g. an idle service) starts a new window.
            if self._late_since is None or self._last_late is None or now - self._last_late > SUSTAINED_LATE_S:
                self._late_since = now
            self._last_late = now
            return now - self._late_since >= SUSTAINED_LATE_S

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
        self._wrappers: dict[str, _Wrapper] = {}

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        # Runs in the server's one polling thread at the call's arrival: only a lookup, the arrival
        # time and a bound behaviour here; the token, the bounds and the slots are the handler thread's.
        handler = continuation(details)
        if handler is None:
            return handler
        if details.method.startswith(EXEMPT_PREFIXES):
            # No token needed, but health Watch and reflection streams pin threads too: capped.
            return self._capped(handler, details.method) if handler.response_streaming else handler
        wrap = self._wrappers.get(details.method)
        if wrap is None:
            wrap = self._wrappers[details.method] = _Wrapper(self._auth, details.method, handler.request_streaming,
                                                             self._admission)
        kind = handler_kind(handler)
        run = wrap.streaming if handler.response_streaming else wrap.unary
        return with_behavior(handler, kind, functools.partial(run, getattr(handler, kind), time.monotonic()))

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
    """What every call of one method shares; ``unary``/``streaming`` serve one call (in its thread)."""

    def __init__(self, auth: TokenAuthenticator | None, method: str, request_streaming: bool,
                 admission: Admission | None) -> None:
        self.auth, self.method = auth, method
        self.request_streaming = request_streaming
        self.admission = admission

    def _slot(self, streaming: bool, arrived: float) -> contextlib.AbstractContextManager[None]:
        if self.admission is None:
            return contextlib.nullcontext()
        return self.admission.admit(self.method, streaming, arrived)

    def _identity(self, context: grpc.ServicerContext) -> Identity:
        if self.auth is None:
            return Identity(DEFAULT_TENANT, "anonymous")
        authorization = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        return self.auth.authenticate(authorization)

    def unary(self, behavior: Callable[..., Any], arrived: float, request: Any, context: grpc.ServicerContext) -> Any:
        start, tenant = time.monotonic(), "-"
        try:
            ident = self._identity(context)
            tenant = ident.tenant
            if not self.request_streaming:
                check_request(request)
            trace.get_current_span().set_attribute("tuneforge.tenant", ident.tenant)
            with self._slot(self.request_streaming, arrived), bound_identity(ident), log_context(tenant=ident.tenant):
                result = behavior(_checked(request) if self.request_streaming else request, context)
            self._log(start, tenant, "OK")
            return result
        except Exception as exc:  # noqa: BLE001 - every error is mapped, none escapes unmapped
            self._abort(exc, context, start, tenant)

    def streaming(self, behavior: Callable[..., Iterator[Any]], arrived: float, request: Any,
                  context: grpc.ServicerContext) -> Iterator[Any]:
        start, tenant = time.monotonic(), "-"
        try:
            ident = self._identity(context)
            tenant = ident.tenant
            if not self.request_streaming:
                check_request(request)
            trace.get_current_span().set_attribute("tuneforge.tenant", ident.tenant)
            with self._slot(True, arrived), bound_identity(ident), log_context(tenant=ident.tenant):
                yield from behavior(_checked(request) if self.request_streaming else request, context)
            self._log(start, tenant, "OK")
        except Exception as exc:  # noqa: BLE001
            self._abort(exc, context, start, tenant)

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


