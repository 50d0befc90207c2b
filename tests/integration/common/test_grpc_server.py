"""The shared server plumbing on a real gRPC server: auth, error mapping, health, reflection, drain."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tuneforge.common import errors as e
from tuneforge.common.auth import current_identity
from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.common.grpc.server import build_server
from tuneforge.common.settings import ServiceSettings
from tuneforge.training.app import SERVICE_NAME, TrainingSettings, build_app
from tuneforge.training.v1 import training_pb2 as pb
from tuneforge.training.v1 import training_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

RAISES = {
    "invalid": e.InvalidInput.of([e.FieldViolation("hyperparameters.learning_rate", "must be > 0"),
                                  e.FieldViolation("base_model", "required")]),
    "not_found": e.NotFound("job job_x not found"),
    "exists": e.AlreadyExists("exists"),
    "precondition": e.FailedPrecondition("dataset in use"),
    "aborted": e.Aborted("conflict"),
    "exhausted": e.ResourceExhausted("too big"),
    "unavailable": e.Unavailable("store down"),
    "denied": e.PermissionDenied("no"),
    "dataloss": e.IntegrityError("sha256 mismatch in model.safetensors"),
    "bug": ZeroDivisionError("secret internals 0123456789abcdef"),
}


class ProbeServicer(pb_grpc.TrainingServiceServicer):
    """Raises the error named by the idempotency key; GetJob echoes the tenant, slowly if asked."""

    def CreateJob(self, request, context):
        raise RAISES[request.idempotency_key]

    entered = threading.Event()
    release = threading.Event()

    def GetJob(self, request, context):
        if request.job_id == "slow":
            self.entered.set()
            self.release.wait(30)  # the test releases it once it has seen the drain begin
        return pb.GetJobResponse(job=pb.Job(id=current_identity().tenant))

    def StreamJobEvents(self, request, context):
        yield pb.JobEvent(sequence=1, log=pb.LogEntry(message=current_identity().tenant))
        raise e.NotFound("job ended")


@pytest.fixture
def probe(make_service):
    def build(settings: ServiceSettings):
        return build_server(settings, [(pb_grpc.add_TrainingServiceServicer_to_server, ProbeServicer())],
                            [SERVICE_NAME])
    return make_service(TrainingSettings, build)


@pytest.mark.parametrize("key, code", [
    ("invalid", grpc.StatusCode.INVALID_ARGUMENT), ("not_found", grpc.StatusCode.NOT_FOUND),
    ("exists", grpc.StatusCode.ALREADY_EXISTS), ("precondition", grpc.StatusCode.FAILED_PRECONDITION),
    ("aborted", grpc.StatusCode.ABORTED), ("exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("unavailable", grpc.StatusCode.UNAVAILABLE), ("denied", grpc.StatusCode.PERMISSION_DENIED),
    ("dataloss", grpc.StatusCode.DATA_LOSS), ("bug", grpc.StatusCode.INTERNAL),
])
def test_errors_map_to_status_codes(probe, key, code):
    stub = pb_grpc.TrainingServiceStub(probe.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateJob(pb.CreateJobRequest(idempotency_key=key))
    assert info.value.code() == code


def test_invalid_argument_carries_field_violations(probe):
    stub = pb_grpc.TrainingServiceStub(probe.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateJob(pb.CreateJobRequest(idempotency_key="invalid"))
    assert bad_request_violations(info.value) == [("hyperparameters.learning_rate", "must be > 0"),
                                                  ("base_model", "required")]


def test_internal_errors_hide_details_from_the_client(probe, caplog):
    stub = pb_grpc.TrainingServiceStub(probe.channel())
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as info:
        stub.CreateJob(pb.CreateJobRequest(idempotency_key="bug"))
    details = info.value.details()
    assert "internal error (incident" in details
    assert "ZeroDivision" not in details and "0123456789abcdef" not in details and "Traceback" not in details
    assert "ZeroDivisionError" in caplog.text  # the detail is in the server log


@pytest.mark.parametrize("token", [None, "not-a-valid-token-at-all"])
def test_unauthenticated_calls_are_refused(probe, token):
    stub = pb_grpc.TrainingServiceStub(probe.channel(token))
    with pytest.raises(grpc.RpcError) as info:
        stub.GetJob(pb.GetJobRequest(job_id="x"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tenant_identity_reaches_unary_and_streaming_handlers(probe):
    stub = pb_grpc.TrainingServiceStub(probe.channel("other"))
    assert stub.GetJob(pb.GetJobRequest(job_id="x")).job.id == "acme2"
    stream = stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id="x"))
    assert next(stream).log.message == "acme2"
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection_need_no_token(probe):
    ch = probe.channel(None)
    health = health_pb2_grpc.HealthStub(ch)
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_graceful_stop_drains_in_flight_calls_and_reports_not_serving(probe):
    stub = pb_grpc.TrainingServiceStub(probe.channel())
    result: dict[str, object] = {}
    ProbeServicer.entered.clear()
    ProbeServicer.release.clear()
    t = threading.Thread(target=lambda: result.setdefault("job", stub.GetJob(pb.GetJobRequest(job_id="slow"))))
    t.start()
    assert ProbeServicer.entered.wait(10), "the slow call never reached the handler"
    stopper = threading.Thread(target=probe.server.stop, args=(30.0,))
    stopper.start()
    deadline = time.monotonic() + 10
    while (probe.server.health._server_status.get(SERVICE_NAME) != health_pb2.HealthCheckResponse.NOT_SERVING
           and time.monotonic() < deadline):
        time.sleep(0.01)
    # Health flips to NOT_SERVING while the in-flight call is still running (drain, then stop).
    assert probe.server.health._server_status.get(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert t.is_alive() and stopper.is_alive()
    ProbeServicer.release.set()
    t.join(10)
    stopper.join(10)
    assert not stopper.is_alive()
    assert result["job"].job.id == "acme"  # the in-flight call finished


def test_stop_waits_for_handlers_that_outlive_the_grace_period(probe):
    """A call the stop cancels may still be running its handler: stop returns only after it ended,
    so storage torn down next is no longer in use."""
    before = set(threading.enumerate())
    stub = pb_grpc.TrainingServiceStub(probe.channel())
    ProbeServicer.entered.clear()
    ProbeServicer.release.clear()

    def call() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled by the stop
            stub.GetJob(pb.GetJobRequest(job_id="slow"))

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert ProbeServicer.entered.wait(10), "the slow call never reached the handler"
    stopper = threading.Thread(target=probe.server.stop, args=(0.0,))
    stopper.start()
    # The grace period (0 s) is over, the call is cancelled, but its handler still runs: stop waits.
    assert not _ends_within(stopper, 1.0)
    ProbeServicer.release.set()
    assert _ends_within(stopper, 30.0)
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("training_")]


def _ends_within(thread: threading.Thread, seconds: float) -> bool:
    thread.join(seconds)
    return not thread.is_alive()


def test_training_service_answers_list_jobs(make_service):
    svc = make_service(TrainingSettings, build_app)
    stub = pb_grpc.TrainingServiceStub(svc.channel())
    assert list(stub.ListJobs(pb.ListJobsRequest()).jobs) == []
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateJob(pb.CreateJobRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tokens_never_appear_in_logs_or_error_messages(probe, caplog):
    wrong = "wrong-token-value-0123456789"
    with caplog.at_level(logging.DEBUG):
        stub = pb_grpc.TrainingServiceStub(probe.channel())
        stub.GetJob(pb.GetJobRequest(job_id="x"))
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.TrainingServiceStub(probe.channel(wrong)).GetJob(pb.GetJobRequest(job_id="x"))
    for secret in (probe.token, probe.other_token, wrong):
        assert secret not in caplog.text
        assert secret not in info.value.details()


def test_access_log_lines_carry_each_calls_own_correlation_fields(probe, caplog):
    """The interceptors keep one wrapper per method and read each call's metadata in its handler
    thread: consecutive calls of one method log their own request id, trace id and tenant."""
    from tuneforge.common.logging import ContextFilter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(ContextFilter())
    rpc_log = logging.getLogger("tuneforge.rpc")
    rpc_log.addHandler(handler)
    try:
        caplog.set_level(logging.INFO, logger="tuneforge.rpc")
        calls = [(probe.channel(), "req-one", "4bf92f3577b34da6a3ce929d0e0e4736"),
                 (probe.channel(probe.other_token), "req-two", "0af7651916cd43dd8448eb211c80319c")]
        for ch, request_id, trace_id in calls:
            md = (("x-request-id", request_id), ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"))
            pb_grpc.TrainingServiceStub(ch).GetJob(pb.GetJobRequest(job_id="x"), metadata=md, timeout=30)
        with pytest.raises(grpc.RpcError):
            pb_grpc.TrainingServiceStub(probe.channel("not-a-valid-token-0123456789")).GetJob(
                pb.GetJobRequest(job_id="x"), metadata=(("x-request-id", "req-three"),), timeout=30)
    finally:
        rpc_log.removeHandler(handler)
    lines = [(r.ctx_request_id, r.ctx_trace_id, r.ctx_tenant, r.ctx_code) for r in records
             if getattr(r, "ctx_method", "").endswith("/GetJob")]
    assert lines[:2] == [("req-one", calls[0][2], "acme", "OK"), ("req-two", calls[1][2], "acme2", "OK")]
    assert lines[2][0] == "req-three" and lines[2][2:] == ("-", "UNAUTHENTICATED")
