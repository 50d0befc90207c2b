"""tuneforge-gate (services/gate) in front of a real tuneforge gRPC server: it passes calls through
unchanged (auth, errors with their details, deadlines, streams, health), keeps at most -max-active
unary calls in flight, absorbs a burst while calls still find free slots, and answers
RESOURCE_EXHAUSTED (reason OVERLOADED, with a RetryInfo) once the service is past capacity.
No timing is asserted: the tests hold the service's one slot and look at how calls end."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.fixtures.grpc import future_code
from tuneforge.client import _transport
from tuneforge.client.errors import ResourceExhausted as ClientResourceExhausted
from tuneforge.common.auth import Identity
from tuneforge.common.errors import FieldViolation, InvalidInput, ResourceExhausted
from tuneforge.common.grpc.client import channel
from tuneforge.common.grpc.gate import find_binary, start_gate, streaming_methods
from tuneforge.common.grpc.server import build_server
from tuneforge.common.peers import clients as peer_clients
from tuneforge.common.peers.clients import _Peer
from tuneforge.common.settings import ServiceSettings
from tuneforge.training.app import SERVICE_NAME, TrainingSettings
from tuneforge.training.v1 import training_pb2 as pb
from tuneforge.training.v1 import training_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

GENEROUS_DEADLINE_S = 60


class Backend(pb_grpc.TrainingServiceServicer):
    """GetJob 'hold' keeps running until released; 'bad' is INVALID_ARGUMENT naming a field;
    StreamJobEvents sends three events."""

    def __init__(self) -> None:
        self.held = threading.Semaphore(0)
        self.release = threading.Event()
        self.remaining: list[float] = []
        self.tenants: list[str] = []
        self.left = threading.Event()  # a held call's client went away

    def GetJob(self, request, context):
        from tuneforge.common.auth import current_identity
        self.tenants.append(current_identity().tenant)
        self.remaining.append(context.time_remaining())
        if request.job_id == "hold":
            context.add_callback(self.left.set)
            self.held.release()
            self.release.wait(GENEROUS_DEADLINE_S)
        if request.job_id == "bad":
            raise InvalidInput.of([FieldViolation("job_id", "must not be 'bad': use a real job id")])
        if request.job_id == "quota":
            raise ResourceExhausted("tenant acme already runs 2 jobs, its quota", reason="QUOTA_EXCEEDED")
        return pb.GetJobResponse(job=pb.Job(id=request.job_id))

    def StreamJobEvents(self, request, context):
        for i in range(3):
            yield pb.JobEvent(sequence=i + 1)


@pytest.fixture
def gated(make_service):
    binary = find_binary()
    if binary is None:
        pytest.fail("tuneforge-gate is not built: run `make gate` (make test builds it)")
    gates = []

    def start(**gate_options):
        backend = Backend()

        def build(settings: ServiceSettings):
            return build_server(settings, [(pb_grpc.add_TrainingServiceServicer_to_server, backend)], [SERVICE_NAME])
        handle = make_service(TrainingSettings, build)
        gate = start_gate(handle.address, streaming_methods([pb.DESCRIPTOR]), binary=binary, **gate_options)
        gates.append(gate)
        return handle, backend, gate
    yield start
    for g in gates:
        g.stop()


def _info(err: grpc.RpcError, kind):
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        message = kind()
        if detail.Unpack(message):
            return message
    return None


def _metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _free_address() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# A gate that sheds as soon as no call has found a free slot for 1 ms, while before that a queued
# call could wait a minute (longer than any deadline below): a gate that never switched to shedding
# would leave the calls DEADLINE_EXCEEDED instead of refused.
SHEDDING = {"burst_wait_ms": GENEROUS_DEADLINE_S * 1000, "interval_ms": 1}


@contextlib.contextmanager
def _one_slot_held(gated, **options) -> Iterator[SimpleNamespace]:
    """A gate with one slot and ``/metrics``, the slot taken by a GetJob the service holds until the
    block ends; then that call must end OK. Yields handle, backend, gate, metrics, stub."""
    metrics = _free_address()
    handle, backend, gate = gated(max_active=1, metrics=metrics, **options)
    stub = pb_grpc.TrainingServiceStub(channel(gate.address, handle.token, default_timeout=60))
    held = stub.GetJob.future(pb.GetJobRequest(job_id="hold"), timeout=GENEROUS_DEADLINE_S)
    try:
        assert backend.held.acquire(timeout=30)
        time.sleep(0.01)  # not a wait for an event: the slot has now been taken for longer than 1 ms
        yield SimpleNamespace(handle=handle, backend=backend, gate=gate, metrics=metrics, stub=stub)
    finally:
        backend.release.set()
    assert held.result().job.id == "hold"


def test_the_gate_passes_calls_through_unchanged(gated) -> None:
    handle, backend, gate = gated()
    stub = pb_grpc.TrainingServiceStub(channel(gate.address, handle.token, default_timeout=60))
    assert stub.GetJob(pb.GetJobRequest(job_id="j1"), timeout=30).job.id == "j1"
    assert backend.tenants == ["acme"]  # the caller's token reached the service
    assert 0 < backend.remaining[0] <= 30  # and so did its deadline
    with pytest.raises(grpc.RpcError) as caught:  # the service's error, details and all
        stub.GetJob(pb.GetJobRequest(job_id="bad"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = _info(caught.value, error_details_pb2.BadRequest)
    assert bad is not None and bad.field_violations[0].field == "job_id"
    assert [e.sequence for e in stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id="j1"), timeout=30)] == [1, 2, 3]
    anonymous = pb_grpc.TrainingServiceStub(channel(gate.address, None, default_timeout=60))
    with pytest.raises(grpc.RpcError) as caught:
        anonymous.GetJob(pb.GetJobRequest(job_id="j1"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_past_capacity_calls_are_refused_overloaded_while_health_and_streams_pass(gated) -> None:
    with _one_slot_held(gated, queue_target_ms=200, **SHEDDING) as held:
        stub, gate = held.stub, held.gate
        burst = [stub.GetJob.future(pb.GetJobRequest(job_id=f"j{i}"), timeout=30) for i in range(10)]
        health = health_pb2_grpc.HealthStub(channel(gate.address, None, default_timeout=60))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING  # health needs no slot
        assert len(list(stub.StreamJobEvents(pb.StreamJobEventsRequest(job_id="j"), timeout=30))) == 3  # nor streams
        with pytest.raises(grpc.RpcError) as caught:
            burst[0].result()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = _info(caught.value, error_details_pb2.ErrorInfo)
        assert info is not None and info.reason == "OVERLOADED" and info.domain == "tuneforge"
        retry = _info(caught.value, error_details_pb2.RetryInfo)
        assert retry is not None and retry.retry_delay.ToMilliseconds() == 200
        assert "GetJob waited" in (caught.value.details() or "")
        assert [future_code(c) for c in burst] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * len(burst)
        assert _refused(held.metrics) == len(burst)
        assert len(held.backend.remaining) == 1  # nothing refused reached the service: only the held call ran
        assert _metric(held.metrics, "tuneforge_gate_overloads_total") >= 1
    assert stub.GetJob(pb.GetJobRequest(job_id="after"), timeout=30).job.id == "after"  # the slot came back


def test_a_burst_waits_for_a_slot_while_the_service_keeps_up(gated) -> None:
    # Shedding would need a whole minute without a free slot: a queued call waits for its turn.
    with _one_slot_held(gated, queue_target_ms=100, burst_wait_ms=GENEROUS_DEADLINE_S * 1000,
                        interval_ms=GENEROUS_DEADLINE_S * 1000) as held:
        waiting = held.stub.GetJob.future(pb.GetJobRequest(job_id="second"), timeout=GENEROUS_DEADLINE_S)
        deadline = time.monotonic() + 30
        while _metric(held.metrics, "tuneforge_gate_waiting_calls") < 1:  # it is queued in the gate
            assert time.monotonic() < deadline, "the second call never queued in the gate"
            time.sleep(0.05)
        assert len(held.backend.remaining) == 1  # and has not reached the service
    assert waiting.result().job.id == "second"


def test_a_backend_that_is_gone_is_unavailable(gated) -> None:
    handle, _, gate = gated()
    handle.server.stop(0)
    stub = pb_grpc.TrainingServiceStub(channel(gate.address, handle.token, default_timeout=60))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetJob(pb.GetJobRequest(job_id="j1"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_gate_answers_its_own_health_check_and_passes_every_other_one_through(gated) -> None:
    # The liveness probe asks for service "tuneforge.gate": the gate answers it without the service,
    # so a service that is down (or slow) does not get its gate restarted; the readiness probe's
    # check (service "") and a check naming the service still reach the service.
    handle, _, gate = gated()
    check = health_pb2_grpc.HealthStub(channel(gate.address, None, default_timeout=60)).Check
    for service in ("", SERVICE_NAME):
        assert check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:  # the service's own answer: it does not know this name
        check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    handle.server.stop(0)
    assert check(health_pb2.HealthCheckRequest(service="tuneforge.gate"), timeout=30).status == \
        health_pb2.HealthCheckResponse.SERVING
    for service in ("", SERVICE_NAME):
        with pytest.raises(grpc.RpcError) as caught:
            check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_leaves_ends_the_call_on_the_service(gated) -> None:
    handle, backend, gate = gated()
    stub = pb_grpc.TrainingServiceStub(channel(gate.address, handle.token, default_timeout=60))
    held = stub.GetJob.future(pb.GetJobRequest(job_id="hold"), timeout=GENEROUS_DEADLINE_S)
    try:
        assert backend.held.acquire(timeout=30)
        held.cancel()
        assert backend.left.wait(30), "the service never saw the client leave"
    finally:
        backend.release.set()


def test_after_sigterm_the_gate_serves_through_its_shutdown_delay_then_drains(gated, tmp_path) -> None:
    # A pod's gate: its endpoints are still being removed when SIGTERM arrives, so it serves on (a
    # delay far longer than this test; a second signal cuts it short, as the kubelet's kill would).
    log = tmp_path / "gate.log"
    handle, _, gate = gated(shutdown_delay_s=600, log=log)
    gate.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while "SIGTERM: serving 10m0s more" not in log.read_text():  # the signal has arrived
        assert time.monotonic() < deadline and gate.process.poll() is None, log.read_text()
        time.sleep(0.05)
    with channel(gate.address, handle.token, default_timeout=60) as ch:  # a new connection, after SIGTERM
        assert pb_grpc.TrainingServiceStub(ch).GetJob(pb.GetJobRequest(job_id="j1"), timeout=30).job.id == "j1"
    assert gate.process.poll() is None
    gate.process.send_signal(signal.SIGTERM)
    assert gate.process.wait(60) == 0


# ------------------------------------------------------------------ the SDK against the gate

def _sdk(gate, handle) -> _transport.Service:
    ch = grpc.insecure_channel(gate.address, options=_transport.channel_options())
    return _transport.Service(pb_grpc.TrainingServiceStub(ch), handle.token, timeout=GENEROUS_DEADLINE_S)


def _refused(metrics: str) -> float:
    return _metric(metrics, 'tuneforge_gate_calls_total{method="/tuneforge.training.v1.TrainingService/GetJob",'
                            'outcome="overloaded"}')


def test_the_sdk_retries_an_overloaded_read_until_it_is_served(gated, monkeypatch) -> None:
    # Attempts bounded only by the call's deadline here, so the test decides when the slot frees.
    monkeypatch.setattr(_transport, "OVERLOAD_ATTEMPTS", 10_000)
    got: list[object] = []
    with _one_slot_held(gated, queue_target_ms=50, **SHEDDING) as held:
        sdk = _sdk(held.gate, held.handle)
        reader = threading.Thread(target=lambda: got.append(sdk.GetJob(pb.GetJobRequest(job_id="j1"))))
        reader.start()
        deadline = time.monotonic() + 30
        while _refused(held.metrics) < 2:  # refused, backed off, tried again, refused again
            assert time.monotonic() < deadline and reader.is_alive(), got
            time.sleep(0.05)
    reader.join(GENEROUS_DEADLINE_S)
    assert [r.job.id for r in got] == ["j1"]  # type: ignore[attr-defined]


def test_the_sdk_gives_up_after_its_attempts_with_the_overload_error(gated) -> None:
    with _one_slot_held(gated, queue_target_ms=50, **SHEDDING) as held:
        with pytest.raises(ClientResourceExhausted) as caught:
            _sdk(held.gate, held.handle).GetJob(pb.GetJobRequest(job_id="j1"))
        assert caught.value.reason == "OVERLOADED" and caught.value.retry_delay_s == pytest.approx(0.05)
        assert _refused(held.metrics) == _transport.OVERLOAD_ATTEMPTS


def test_the_sdk_does_not_retry_a_quota_refusal(gated) -> None:
    handle, backend, gate = gated()
    with pytest.raises(ClientResourceExhausted) as caught:
        _sdk(gate, handle).GetJob(pb.GetJobRequest(job_id="quota"))
    assert caught.value.reason == "QUOTA_EXCEEDED"
    assert len(backend.remaining) == 1  # asked once


def test_the_async_sdk_retries_overload_the_same_way(gated) -> None:
    async def ask(address: str, token: str) -> None:
        async with grpc.aio.insecure_channel(address, options=_transport.channel_options()) as ch:
            sdk = _transport.AsyncService(pb_grpc.TrainingServiceStub(ch), token, timeout=GENEROUS_DEADLINE_S)
            await sdk.GetJob(pb.GetJobRequest(job_id="j1"))

    with _one_slot_held(gated, queue_target_ms=50, **SHEDDING) as held:
        with pytest.raises(ClientResourceExhausted) as caught:
            asyncio.run(ask(held.gate.address, held.handle.token))
        assert caught.value.reason == "OVERLOADED"
        assert _refused(held.metrics) == _transport.OVERLOAD_ATTEMPTS


# ------------------------------------------------------------------ a service's peer calls through a gate

def _peer(gate) -> _Peer:
    return _Peer("training", gate.address, pb_grpc.TrainingServiceStub, timeout_s=GENEROUS_DEADLINE_S)


def test_a_peer_call_refused_overloaded_is_sent_again_until_served(gated, monkeypatch) -> None:
    # A refused call never reached the service, so a service's call to its peer is sent again, any method.
    monkeypatch.setattr(peer_clients, "PEER_OVERLOAD_ATTEMPTS", 10_000)
    got: list[object] = []
    with _one_slot_held(gated, queue_target_ms=50, **SHEDDING) as held:
        caller = Identity("acme", "test", token=held.handle.token)
        peer = _peer(held.gate)
        asking = threading.Thread(target=lambda: got.append(peer.call(caller, "GetJob", pb.GetJobRequest(job_id="j1"))))
        asking.start()
        deadline = time.monotonic() + 30
        while _refused(held.metrics) < 2:  # refused, waited, sent again, refused again
            assert time.monotonic() < deadline and asking.is_alive(), got
            time.sleep(0.05)
    asking.join(GENEROUS_DEADLINE_S)
    assert [r.job.id for r in got] == ["j1"]  # type: ignore[attr-defined]
    peer.close()


def test_a_peer_call_gives_up_after_its_attempts_and_a_quota_refusal_is_not_retried(gated) -> None:
    with _one_slot_held(gated, queue_target_ms=50, **SHEDDING) as held:
        caller = Identity("acme", "test", token=held.handle.token)
        peer = _peer(held.gate)
        with pytest.raises(ResourceExhausted) as caught:
            peer.call(caller, "GetJob", pb.GetJobRequest(job_id="j1"))
        assert "overloaded" in caught.value.message.lower()
        assert _refused(held.metrics) == peer_clients.PEER_OVERLOAD_ATTEMPTS
        peer.close()
    # The service's own quota refusal is RESOURCE_EXHAUSTED too, but not OVERLOADED: asked once.
    handle, backend, gate = gated()
    with pytest.raises(ResourceExhausted) as caught:
        _peer(gate).call(Identity("acme", "test", token=handle.token), "GetJob", pb.GetJobRequest(job_id="quota"))
    assert "quota" in caught.value.message
    assert len(backend.remaining) == 1  # asked once


def test_a_gate_started_before_its_service_serves_every_call_once_the_service_is_up() -> None:
    # In a pod the gate and the service start together: calls (the readiness probe's) fail while the
    # service is not up, and each backend connection they tried waits out a reconnect backoff. Once
    # one connection is up, calls must not land on those still backing off.
    from concurrent import futures

    from grpc_health.v1 import health

    binary = find_binary()
    if binary is None:
        pytest.fail("tuneforge-gate is not built: run `make gate` (make test builds it)")
    backend = _free_address()
    gate = start_gate(backend, streaming_methods([pb.DESCRIPTOR]), binary=binary)
    server = None
    try:
        with grpc.insecure_channel(gate.address) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            # Refused for a while, as a probe would be during the service's start: every backend
            # connection tries, fails and backs off, for longer each time.
            refused_until = time.monotonic() + 8
            while time.monotonic() < refused_until:
                with pytest.raises(grpc.RpcError) as caught:
                    check(health_pb2.HealthCheckRequest(), timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.1)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
            server.add_insecure_port(backend)
            server.start()
            deadline = time.monotonic() + 60
            while True:  # the first call that gets through: one connection is up
                try:
                    check(health_pb2.HealthCheckRequest(), timeout=30)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                    time.sleep(0.05)
            answers = [check(health_pb2.HealthCheckRequest(), timeout=30).status for _ in range(40)]
            assert answers == [health_pb2.HealthCheckResponse.SERVING] * 40
    finally:
        if server is not None:
            server.stop(0)
        gate.stop()
