"""Overload: unary work past the active-call bound waits only until the queueing target, then is
RESOURCE_EXHAUSTED (reason OVERLOADED) well before its deadline; health checks answer throughout.
Real gRPC servers built by ``build_server``; no timing is asserted, only which codes calls end with."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.fixtures.grpc import future_code
from tuneforge.common.errors import ResourceExhausted
from tuneforge.common.grpc.interceptors import Admission
from tuneforge.common.grpc.server import build_server
from tuneforge.common.settings import ServiceSettings
from tuneforge.training.app import SERVICE_NAME, TrainingSettings
from tuneforge.training.v1 import training_pb2 as pb
from tuneforge.training.v1 import training_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

# Far beyond any queueing target: a call that ends DEADLINE_EXCEEDED was left waiting, not shed.
GENEROUS_DEADLINE_S = 60


class HoldingServicer(pb_grpc.TrainingServiceServicer):
    """GetJob 'hold' keeps its active slot until released; other ids do a little CPU work."""

    def __init__(self) -> None:
        self.held = threading.Semaphore(0)
        self.release = threading.Event()

    def GetJob(self, request, context):
        if request.job_id == "hold":
            self.held.release()
            self.release.wait(GENEROUS_DEADLINE_S)
        else:
            sum(i * i for i in range(2000))  # a read's worth of Python work
        return pb.GetJobResponse(job=pb.Job(id=request.job_id))


@pytest.fixture
def holding(make_service):
    def start(**overrides):
        servicer = HoldingServicer()

        def build(settings: ServiceSettings):
            return build_server(settings, [(pb_grpc.add_TrainingServiceServicer_to_server, servicer)],
                                [SERVICE_NAME])
        handle = make_service(TrainingSettings, build, **overrides)
        return handle, servicer
    return start


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def test_calls_that_cannot_start_within_the_target_are_shed_and_health_answers(holding) -> None:
    handle, servicer = holding(max_workers=32, max_active_calls=2, queue_target_ms=200)
    stub = pb_grpc.TrainingServiceStub(handle.channel())
    held = [stub.GetJob.future(pb.GetJobRequest(job_id="hold"), timeout=GENEROUS_DEADLINE_S) for _ in range(2)]
    try:
        assert all(servicer.held.acquire(timeout=30) for _ in held)  # both active slots are taken
        burst = [stub.GetJob.future(pb.GetJobRequest(job_id=f"j{i}"), timeout=GENEROUS_DEADLINE_S)
                 for i in range(20)]
        health = health_pb2_grpc.HealthStub(handle.channel(None))
        for _ in range(3):  # health needs no slot: answered while the burst waits and is shed
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            burst[0].result()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(caught.value) == "OVERLOADED"
        assert "TUNEFORGE_QUEUE_TARGET_MS" in (caught.value.details() or "")
        assert [future_code(c) for c in burst] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * len(burst)
    finally:
        servicer.release.set()
    assert [c.result().job.id for c in held] == ["hold", "hold"]  # admitted work finished normally
    assert stub.GetJob(pb.GetJobRequest(job_id="after"), timeout=30).job.id == "after"  # the slots came back


def test_a_saturating_burst_ends_only_ok_or_resource_exhausted_never_past_its_deadline(holding) -> None:
    handle, _ = holding(max_workers=64, max_active_calls=2, queue_target_ms=50)
    stub = pb_grpc.TrainingServiceStub(handle.channel())
    health = health_pb2_grpc.HealthStub(handle.channel(None))
    burst = [stub.GetJob.future(pb.GetJobRequest(job_id=f"j{i}"), timeout=GENEROUS_DEADLINE_S) for i in range(300)]
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
        health_pb2.HealthCheckResponse.SERVING
    codes = {future_code(c) for c in burst}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert grpc.StatusCode.OK in codes


def test_without_a_queueing_target_a_call_waits_for_its_turn(holding) -> None:
    handle, servicer = holding(max_workers=8, max_active_calls=1, queue_target_ms=0)
    stub = pb_grpc.TrainingServiceStub(handle.channel())
    first = stub.GetJob.future(pb.GetJobRequest(job_id="hold"), timeout=GENEROUS_DEADLINE_S)
    assert servicer.held.acquire(timeout=30)
    try:
        waiting = stub.GetJob.future(pb.GetJobRequest(job_id="second"), timeout=GENEROUS_DEADLINE_S)
        with pytest.raises(grpc.FutureTimeoutError):
            waiting.result(timeout=0.3)  # still waiting for the one active slot (it is never refused)
    finally:
        servicer.release.set()
    assert first.result().job.id == "hold" and waiting.result().job.id == "second"


# ------------------------------------------------------------------------- Admission on its own

def test_at_the_bound_a_call_that_arrived_longer_ago_than_the_target_is_shed_at_once() -> None:
    admission = Admission(calls=4, streams=2, active=1, queue_target_s=0.05)
    with admission.admit("/s/Get", False, time.monotonic()):  # the one active slot is taken
        with pytest.raises(ResourceExhausted) as caught, admission.admit("/s/Get", False, time.monotonic() - 1.0):
            pytest.fail("a call past its queueing target ran")
        assert caught.value.reason == "OVERLOADED" and "Get waited" in caught.value.message
    with admission.admit("/s/Get", False, time.monotonic()):  # the slots were given back
        pass


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _runs(admission: Admission, arrived: float) -> bool:
    try:
        with admission.admit("/s/Get", False, arrived):
            return True
    except ResourceExhausted as exc:
        assert exc.reason == "OVERLOADED"
        return False


def test_a_free_slot_admits_late_calls_until_every_call_has_been_late_for_a_while() -> None:
    """One late call (a loaded CI runner, a pause) runs; calls that all start late for
    SUSTAINED_LATE_S (a standing queue: the process is saturated) are shed even with free slots,
    until one call starts in time again."""
    from tuneforge.common.grpc.interceptors import SUSTAINED_LATE_S

    clock = _Clock()
    admission = Admission(calls=4, streams=2, active=2, queue_target_s=0.05, clock=clock)
    assert _runs(admission, clock.now - 10.0)  # late, but the first late one: it runs
    clock.now += SUSTAINED_LATE_S / 2
    assert _runs(admission, clock.now - 0.2)  # still within the interval
    clock.now += SUSTAINED_LATE_S
    assert not _runs(admission, clock.now - 0.2)  # late for longer than the interval: shed
    assert _runs(admission, clock.now - 0.01)  # a call in time ends the late spell
    assert _runs(admission, clock.now - 0.2)  # and the next late one runs again


def test_streaming_calls_take_no_active_slot() -> None:
    admission = Admission(calls=4, streams=2, active=1, queue_target_s=0.05)
    with admission.admit("/s/Get", False, time.monotonic()), admission.admit("/s/Watch", True, time.monotonic()):
        with pytest.raises(ResourceExhausted) as caught, admission.admit("/s/Get", False, time.monotonic()):
            pytest.fail("a second unary call ran past the active bound")
        assert caught.value.reason == "OVERLOADED"
