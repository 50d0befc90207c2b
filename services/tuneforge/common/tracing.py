"""OpenTelemetry traces: one span per RPC, per peer call and around the domain work, in one trace.

The W3C ``traceparent`` header is the one correlation mechanism: the server interceptor
(``common.grpc.observe``) continues the caller's trace in a SERVER span, peer calls
(``common.grpc.client``) start a CLIENT span and send its ``traceparent``, and the log correlation
field ``trace_id`` is the trace id of the current span, so a log line and its spans share an id.
Background work (a curation run, an evaluation, a training run) continues the trace of the call
that queued it (``carry`` then ``continued``).

The tracer provider is the process's (one per process: ``configure_tracing``, idempotent). Spans
are always made, so trace ids exist and travel, but they are exported only when an OTLP endpoint
is set (``TUNEFORGE_OTLP_ENDPOINT``, or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``): with none,
nothing is sent and nothing connects. Sampling follows the standard ``OTEL_TRACES_SAMPLER``
(default: parent-based, always on). ``add_span_processor`` adds a processor that can be removed
again (tests read spans with the SDK's in-memory exporter).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tuneforge.common.logging import log_context

log = logging.getLogger(__name__)
T = TypeVar("T")

TRACER_NAME = "tuneforge"
STANDARD_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_endpoint = ""


class _Fanout(SpanProcessor):
    """The provider's one processor: a list that processors join and leave at run time (the SDK's own
    list only grows)."""

    def __init__(self) -> None:
        self._processors: tuple[SpanProcessor, ...] = ()
        self._lock = threading.Lock()

    def add(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = (*self._processors, processor)

    def remove(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = tuple(p for p in self._processors if p is not processor)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        for p in self._processors:
            p.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self._processors:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self._processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._processors)


_fanout = _Fanout()


def otlp_endpoint(configured: str) -> str:
    """The OTLP endpoint to export to: the setting, else the standard variable, else none ('')."""
    return configured.strip() or os.environ.get(STANDARD_ENDPOINT_ENV, "").strip()


def configure_tracing(service_name: str, endpoint: str = "") -> TracerProvider:
    """Install this process's tracer provider (the first call), exporting over OTLP/gRPC when an
    endpoint is given or set in ``OTEL_EXPORTER_OTLP_ENDPOINT``. Later calls return the same provider
    (several services in one process share it; their spans carry ``tuneforge.service``)."""
    global _provider, _endpoint
    endpoint = otlp_endpoint(endpoint)
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
            _provider.add_span_processor(_fanout)
            trace.set_tracer_provider(_provider)
        if endpoint and not _endpoint:
            _fanout.add(_otlp_processor(endpoint))
            _endpoint = endpoint
            log.info("exporting traces over OTLP to %s", endpoint)
        elif endpoint and endpoint != _endpoint:
            log.warning("traces already go to %s; %s is not used (one OTLP endpoint per process)",
                        _endpoint, endpoint)
        return _provider


def _otlp_processor(endpoint: str) -> SpanProcessor:
    """A batching OTLP/gRPC exporter (the channel connects lazily, on the first export)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    insecure = endpoint.startswith("http://") or "://" not in endpoint
    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))


def add_span_processor(processor: SpanProcessor) -> None:
    """Send every span ended from now on to ``processor`` too (installs a provider if none is)."""
    if _provider is None:
        configure_tracing(TRACER_NAME)
    _fanout.add(processor)


def remove_span_processor(processor: SpanProcessor) -> None:
    """Stop sending spans to ``processor``."""
    _fanout.remove(processor)


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The tuneforge tracer (a no-op one until ``configure_tracing``)."""
    global _tracer
    if _tracer is None:
        # Made once: ``get_tracer`` builds a new tracer (and its scope) per call, which every RPC paid.
        # Made before the provider is installed it is the API's proxy, which follows the provider once set.
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


def trace_id_hex(span: trace.Span | None = None) -> str:
    """The 32-hex trace id of ``span`` (default: the current one); '' when there is none."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The remote parent in W3C ``traceparent``/``tracestate`` headers (a malformed one is ignored)."""
    return _PROPAGATOR.extract(carrier)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current span's ``traceparent`` (and ``tracestate``) into ``carrier``."""
    _PROPAGATOR.inject(carrier)


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL,
         parent: otel_context.Context | None = None) -> Iterator[trace.Span]:
    """A span around a block, current inside it; an exception ends it with ERROR and is re-raised.
    Attributes whose value is None or '' are left out."""
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None and v != ""}
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=attrs,
                                        record_exception=True, set_status_on_exception=True) as current:
        yield current


def carry() -> otel_context.Context:
    """The current trace context, to continue in background work (pass it to ``continued``)."""
    return otel_context.get_current()


@contextlib.contextmanager
def attached(ctx: otel_context.Context | None) -> Iterator[None]:
    """Make ``ctx`` (from ``carry``) current for a block, in another thread."""
    if ctx is None:
        yield
        return
    token, thread = otel_context.attach(ctx), threading.get_ident()
    try:
        yield
    finally:
        # A generator closed from another thread (a stream the client left, collected elsewhere) cannot
        # reset this thread's context from there; this thread's next task starts from its own parent.
        if threading.get_ident() == thread:
            otel_context.detach(token)


def server_context(parent: otel_context.Context, current: trace.Span) -> otel_context.Context:
    """``parent`` with ``current`` as its span (what ``attached`` makes current for a handler)."""
    return trace.set_span_in_context(current, parent)


@contextlib.contextmanager
def continued(ctx: otel_context.Context | None, name: str,
              attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """Background work continuing the trace ``ctx`` (from ``carry``; None: a new trace): a span
    ``name``, current inside the block, its trace id bound as the log field ``trace_id``."""
    with attached(ctx), span(name, attributes) as current, log_context(trace_id=trace_id_hex(current)):
        yield current


def in_span(fn: Callable[..., T], name: str, attributes: Mapping[str, Any] | None = None) -> Callable[..., T]:
    """``fn`` run inside a span ``name`` (for work handed to a pool that carries the trace context,
    ``common.logging.ContextThreadPoolExecutor``: the span is a child of the submitting call's)."""
    def run(*args: Any, **kwargs: Any) -> T:
        with span(name, attributes):
            return fn(*args, **kwargs)
    return run


def outcome(state: str, *, failed: bool, message: str = "") -> None:
    """Record how the work of the current span ended (work that records its failures itself)."""
    current = trace.get_current_span()
    current.set_attribute("tuneforge.state", state)
    if failed:
        current.set_status(Status(StatusCode.ERROR, message or state))


def set_error(current: trace.Span, code: str, message: str = "") -> None:
    """Mark a span failed with a gRPC status code name (what a handled error leaves behind)."""
    current.set_attribute("rpc.grpc.status_code_name", code)
    current.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else code))
