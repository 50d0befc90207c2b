"""Log correlation fields (contextvars) and the ids a call is correlated by."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import trace

from tuneforge.common.grpc.client import _AuthDeadlineInterceptor, _CallDetails
from tuneforge.common.grpc.observe import correlation_ids
from tuneforge.common.logging import (
    ContextFilter,
    ContextThreadPoolExecutor,
    JsonFormatter,
    current_log_context,
    log_context,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("metadata, request_id, trace_id", [
    ({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}, TRACE[:16], TRACE),
    ({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "x-request-id": "req-42"}, "req-42", TRACE),
    ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, None, None),  # all-zero: invalid
    ({"traceparent": "garbage", "x-request-id": "has space"}, None, None),
    ({"x-request-id": "x" * 65}, None, None),
    ({}, None, None),
])
def test_correlation_ids_take_well_formed_headers_else_make_new_ones(metadata, request_id, trace_id):
    got_request, got_trace = correlation_ids(metadata)
    assert len(got_trace) == 32 and int(got_trace, 16) > 0
    assert got_trace == trace_id if trace_id else got_trace != TRACE
    assert got_request == (request_id or got_trace[:16])


def _record(msg: str = "hello", **extra: str) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(record, k, v)
    ContextFilter().filter(record)
    return record


def test_bound_fields_reach_every_record_nested_blocks_add_and_leave():
    with log_context(tenant="acme", request_id="r1"):
        with log_context(job_id="job-1", method=""):  # empty values are not bound
            doc = json.loads(JsonFormatter().format(_record()))
            assert (doc["tenant"], doc["request_id"], doc["job_id"]) == ("acme", "r1", "job-1")
            assert "method" not in doc
        assert current_log_context() == {"tenant": "acme", "request_id": "r1"}
    assert current_log_context() == {}
    assert not hasattr(_record(), "ctx_tenant")


def test_explicit_extras_win_over_bound_fields():
    with log_context(tenant="acme"):
        assert _record(ctx_tenant="other").ctx_tenant == "other"


def test_without_a_tracer_peer_calls_carry_the_bound_trace_id_in_a_traceparent():
    interceptor = _AuthDeadlineInterceptor("tok", 5.0)
    plain = _CallDetails("/svc/M", None, None, None, None, None)
    no_span = trace.INVALID_SPAN  # what a process without a tracer provider gets
    assert "traceparent" not in dict(interceptor._details(plain, no_span).metadata)
    with log_context(trace_id=TRACE):
        header = dict(interceptor._details(plain, no_span).metadata)["traceparent"]
    assert correlation_ids({"traceparent": header})[1] == TRACE
    sent = _CallDetails("/svc/M", None, [("traceparent", "00-keep")], None, None, None)
    with log_context(trace_id=TRACE):
        assert dict(interceptor._details(sent, no_span).metadata)["traceparent"] == "00-keep"


def test_background_work_logs_with_the_fields_of_the_call_that_queued_it():
    from tuneforge.common.auth import Identity, bound_identity, current_identity
    from tuneforge.common.errors import Unauthenticated

    with ContextThreadPoolExecutor(max_workers=1) as pool:
        with log_context(tenant="acme", trace_id=TRACE), bound_identity(Identity("acme", "someone")):
            queued = pool.submit(current_log_context)
            unbound = pool.submit(current_identity)
        assert queued.result(timeout=60) == {"tenant": "acme", "trace_id": TRACE}
        with pytest.raises(Unauthenticated):  # only the log fields travel, never the caller's identity
            unbound.result(timeout=60)
        assert pool.submit(current_log_context).result(timeout=60) == {}
