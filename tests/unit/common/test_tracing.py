"""Traces: a real gRPC server and client with tuneforge's interceptors, spans read in memory; the
OTLP exporter against a tiny OTLP/gRPC trace receiver started here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tuneforge.common import tracing
from tuneforge.common.grpc.client import channel
from tuneforge.common.grpc.observe import ObservingInterceptor
from tuneforge.common.logging import ContextThreadPoolExecutor, current_log_context
from tuneforge.common.metrics import ServiceMetrics

METHOD = "/test.v1.Echo/Call"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    tracing.configure_tracing("test")
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_span_processor(processor)
    yield exporter
    tracing.remove_span_processor(processor)


@pytest.fixture
def echo() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real gRPC server with the observing interceptor: ``Call`` answers its payload, records the log
    fields bound while it ran, and fails with the status code named in a ``fail:`` payload."""
    seen: list[dict[str, str]] = []

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append({**current_log_context(), "span": tracing.trace_id_hex()})
        if request.startswith(b"fail:"):
            context.abort(grpc.StatusCode[request[5:].decode()], "asked to fail")
        return request

    handler = grpc.method_handlers_generic_handler("test.v1.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ObservingInterceptor(ServiceMetrics("echo"), "echo")])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", seen
    server.stop(0).wait()


def _by(exporter: InMemorySpanExporter, kind: SpanKind) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind and s.name == METHOD.lstrip("/")]


def test_a_call_is_a_client_span_and_the_server_span_its_child_in_one_trace(spans, echo):
    address, seen = echo
    with channel(address) as ch, tracing.span("outer") as outer:
        assert ch.unary_unary(METHOD)(b"hi", timeout=10) == b"hi"
    [client], [server] = _by(spans, SpanKind.CLIENT), _by(spans, SpanKind.SERVER)
    assert client.parent.span_id == outer.get_span_context().span_id
    assert server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id == outer.get_span_context().trace_id
    assert server.attributes["rpc.service"] == "test.v1.Echo" and server.attributes["rpc.method"] == "Call"
    assert server.attributes["tuneforge.service"] == "echo"
    assert client.attributes["rpc.grpc.status_code_name"] == server.attributes["rpc.grpc.status_code_name"] == "OK"
    # the handler's log fields carry the trace id of its span
    trace_id = format(server.context.trace_id, "032x")
    assert seen[-1]["trace_id"] == seen[-1]["span"] == trace_id


@pytest.mark.parametrize("code, server_error", [
    ("NOT_FOUND", False),  # the caller's mistake: not a server error (the OpenTelemetry gRPC conventions)
    ("INVALID_ARGUMENT", False),
    ("INTERNAL", True),
    ("UNAVAILABLE", True),
])
def test_failed_calls_carry_their_code_and_server_errors_are_marked(spans, echo, code, server_error):
    address, _ = echo
    with channel(address) as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(METHOD)(f"fail:{code}".encode(), timeout=10)
    assert err.value.code() is grpc.StatusCode[code]
    [client], [server] = _by(spans, SpanKind.CLIENT), _by(spans, SpanKind.SERVER)
    assert client.attributes["rpc.grpc.status_code_name"] == server.attributes["rpc.grpc.status_code_name"] == code
    assert client.status.status_code is StatusCode.ERROR
    assert (server.status.status_code is StatusCode.ERROR) is server_error


def test_a_malformed_traceparent_starts_a_new_trace(spans, echo):
    address, seen = echo
    raw = grpc.insecure_channel(address)
    try:
        raw.unary_unary(METHOD)(b"x", timeout=10, metadata=(("traceparent", "00-zz-11-01"),))
    finally:
        raw.close()
    [server] = _by(spans, SpanKind.SERVER)
    assert server.parent is None
    assert seen[-1]["trace_id"] == format(server.context.trace_id, "032x")


def test_background_work_continues_the_trace_of_the_call_that_queued_it(spans):
    with ContextThreadPoolExecutor(max_workers=1) as pool, tracing.span("call") as call:
        done = pool.submit(tracing.in_span(lambda: tracing.outcome("FAILED", failed=True), "work"))
        done.result(timeout=10)
    [work] = [s for s in spans.get_finished_spans() if s.name == "work"]
    assert work.parent.span_id == call.get_span_context().span_id
    assert work.attributes["tuneforge.state"] == "FAILED" and work.status.status_code is StatusCode.ERROR
    # a carried context continued in a plain thread, with the trace id bound for its log lines
    carried, got = tracing.carry(), {}
    with tracing.span("queued") as queued:
        carried = tracing.carry()

    def run() -> None:
        with tracing.continued(carried, "run"):
            got.update(current_log_context())
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    [ran] = [s for s in spans.get_finished_spans() if s.name == "run"]
    assert ran.parent.span_id == queued.get_span_context().span_id
    assert got["trace_id"] == format(queued.get_span_context().trace_id, "032x")


@pytest.mark.parametrize("setting, standard, want", [
    ("", "", ""),  # off by default: nothing is exported, nothing connects
    ("", "http://collector:4317", "http://collector:4317"),
    ("http://mine:4317", "http://collector:4317", "http://mine:4317"),
])
def test_the_otlp_endpoint_is_the_setting_else_the_standard_variable(monkeypatch, setting, standard, want):
    monkeypatch.setenv(tracing.STANDARD_ENDPOINT_ENV, standard)
    assert tracing.otlp_endpoint(setting) == want


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.got = threading.Event()

    def Export(self, request: Any, context: Any) -> Any:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names += [s.name for s in scope.spans]
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_receiver():
    receiver = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tracing.configure_tracing("test")
    processor = tracing._otlp_processor(f"http://127.0.0.1:{port}")
    tracing.add_span_processor(processor)
    try:
        with tracing.span("exported", {"tuneforge.job_id": "job-1"}):
            pass
        assert processor.force_flush(30_000)
        assert receiver.got.wait(30)
        assert "exported" in receiver.names
    finally:
        tracing.remove_span_processor(processor)
        processor.shutdown()
        server.stop(0).wait()
