"""Streams: capped per service (RESOURCE_EXHAUSTED past the cap), cancelled clients free their
handler within a tick, and open streams never starve unary calls or health checks."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneforge.common.grpc.server import build_server
from tuneforge.common.settings import ServiceSettings
from tuneforge.common.streams import follow
from tuneforge.training.app import SERVICE_NAME, TrainingSettings
from tuneforge.training.v1 import training_pb2 as pb
from tuneforge.training.v1 import training_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


class EndlessServicer(pb_grpc.TrainingServiceServicer):
    """StreamJobEvents follows a subject that never ends; each handler records its exit."""

    def StreamJobEvents(self, request, context):
        self.entered.release()
        try:
            yield pb.JobEvent(sequence=1)
            yield from follow(lambda _cursor: [], cursor=1, sequence=lambda e: e.sequence, is_final=lambda e: False,
                              subject_ended=lambda: False, is_active=context.is_active)
        finally:
            self.exited.release()

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.exited = threading.Semaphore(0)
        self.slow_entered = threading.Semaphore(0)
        self.release = threading.Event()

    def GetJob(self, request, context):
        if request.job_id == "slow":  # a slow unary call: holds its thread until released
            self.slow_entered.release()
            self.release.wait(60)
        return pb.GetJobResponse(job=pb.Job(id=request.job_id))


@pytest.fixture
def endless(make_service):
    servicer = EndlessServicer()

    def build(settings: ServiceSettings):
        return build_server(settings, [(pb_grpc.add_TrainingServiceServicer_to_server, servicer)], [SERVICE_NAME])
    # 5 calls, 3 streams; every call may run at once (the active-call bound is tested in test_overload.py)
    handle = make_service(TrainingSettings, build, max_workers=6, max_streams=3, max_active_calls=6)
    return handle, servicer


def _acquire_all(sem: threading.Semaphore, n: int, timeout: float = 30.0) -> bool:
    return all(sem.acquire(timeout=timeout) for _ in range(n))


def test_streams_past_the_cap_are_refused_and_never_starve_unary_calls(endless) -> None:
    handle, servicer = endless
    stub = pb_grpc.TrainingServiceStub(handle.channel())
    streams = [stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id=f"j{i}"), timeout=120) for i in range(3)]
    for s in streams:
        assert next(s).sequence == 1  # open and being served
    assert _acquire_all(servicer.entered, 3)
    extra = stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id="j9"), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        next(extra)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "TUNEFORGE_MAX_STREAMS" in (caught.value.details() or "")
    # Unary calls and health checks still have threads (generous deadlines: no timing asserted).
    for _ in range(10):
        assert stub.GetJob(pb.GetJobRequest(job_id="u"), timeout=10).job.id == "u"
        health = health_pb2_grpc.HealthStub(handle.channel(None)).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    # Cancelled clients free their handlers (the follow loop notices within a tick) and their slots.
    for s in streams:
        s.cancel()
    assert _acquire_all(servicer.exited, 3), "a cancelled stream kept its handler thread"
    again = stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id="j10"), timeout=30)
    assert next(again).sequence == 1
    again.cancel()


def test_follow_ends_at_once_when_the_cursor_is_past_the_end_of_a_finished_subject() -> None:
    calls: list[float] = []
    events = list(follow(lambda cursor: [], cursor=1000, sequence=lambda e: e, is_final=lambda e: False,
                         subject_ended=lambda: True, is_active=lambda: True, wait=calls.append))
    assert events == [] and len(calls) == 1  # one tick for a late final event, then the end


def test_follow_stops_when_the_client_goes_away() -> None:
    active = iter([True, True, False])
    waits: list[float] = []
    events = list(follow(lambda cursor: [], cursor=0, sequence=lambda e: e, is_final=lambda e: False,
                         subject_ended=lambda: False, is_active=lambda: next(active), wait=waits.append))
    assert events == [] and len(waits) == 2 and all(w < 1.0 for w in waits)


def test_health_watch_streams_are_capped_too_and_check_keeps_answering(endless) -> None:
    handle, _ = endless
    health = health_pb2_grpc.HealthStub(handle.channel(None))  # no token: health is open to everyone
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(3)]
    for w in watches:
        assert next(w).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        next(health.Watch(health_pb2.HealthCheckRequest(), timeout=30))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(5):
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    for w in watches:
        w.cancel()
    # Cancelled watches give their slots back (health's own close callback ends them).
    opened = None
    for _ in range(200):  # the slots come back as the cancellations are processed
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        try:
            next(watch)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            threading.Event().wait(0.05)
            continue
        opened = watch
        break
    assert opened is not None, "cancelled health watches kept their stream slots"
    opened.cancel()


def test_slow_unary_calls_never_take_the_threads_health_checks_need(endless) -> None:
    """max_workers=6 keeps one thread for health: five slow calls fill the rest, the sixth is
    RESOURCE_EXHAUSTED at once, and health checks are answered throughout."""
    handle, servicer = endless
    stub = pb_grpc.TrainingServiceStub(handle.channel())
    results: list[object] = []

    def slow() -> None:
        try:
            results.append(stub.GetJob(pb.GetJobRequest(job_id="slow"), timeout=120).job.id)
        except grpc.RpcError as err:
            results.append(err.code())
    calls = handle.settings.call_limit()
    callers = [threading.Thread(target=slow) for _ in range(calls)]
    for t in callers:
        t.start()
    try:
        assert _acquire_all(servicer.slow_entered, calls)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetJob(pb.GetJobRequest(job_id="one-more"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(handle.channel(None))
        for _ in range(5):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        servicer.release.set()
        for t in callers:
            t.join(60)
    assert results == ["slow"] * calls
    assert stub.GetJob(pb.GetJobRequest(job_id="after"), timeout=30).job.id == "after"
