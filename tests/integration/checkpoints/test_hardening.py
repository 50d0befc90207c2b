"""Bad input at the gRPC edge of the checkpoint service: bounded, refused, never INTERNAL, no server path."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.checkpoints.conftest import CheckpointService, register_request
from tests.integration.checkpoints.test_service import write_checkpoint
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb

pytestmark = pytest.mark.integration


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def test_a_1mib_job_id_is_refused_while_health_keeps_answering(service: CheckpointService) -> None:
    health = health_pb2_grpc.HealthStub(service.handle.channel(None))
    answers: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            answers.append(health.Check(health_pb2.HealthCheckRequest(), timeout=10).status)
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(5):
            code, details = _code(lambda: service.acme.RegisterCheckpoint(
                pb.RegisterCheckpointRequest(job_id="j" * (1 << 20), step=1, prefix="x/"), timeout=30))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "job_id" in details and len(details) < 2048
    finally:
        stop.set()
        prober.join(30)
    assert answers and set(answers) == {health_pb2.HealthCheckResponse.SERVING}


def test_not_found_echoes_are_bounded(service: CheckpointService) -> None:
    code, details = _code(lambda: service.acme.GetManifest(pb.GetManifestRequest(checkpoint="c" * 256), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND and len(details) < 1024


def test_pickled_weights_are_refused_at_registration(service: CheckpointService) -> None:
    files = write_checkpoint(service.store, "acme", "j/step-1", {"pytorch_model.bin": b"\x80\x04pickle",
                                                                 "config.json": b"{}"})
    code, details = _code(lambda: service.acme.RegisterCheckpoint(
        register_request("j", 1, "j/step-1", files, kind=pb.CHECKPOINT_KIND_FULL), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "pickle" in details


def test_full_export_of_a_checkpoint_without_safetensors_is_failed_precondition(service: CheckpointService) -> None:
    # Resume state may be pickled (loaded weights_only by the engine): registration accepts it.
    files = write_checkpoint(service.store, "acme", "j/step-2", {"training_state.pt": b"\x80\x04pickle",
                                                                 "config.json": b"{}"})
    manifest = service.acme.RegisterCheckpoint(
        register_request("j", 2, "j/step-2", files, kind=pb.CHECKPOINT_KIND_FULL), timeout=30).manifest
    code, details = _code(lambda: service.acme.ExportCheckpoint(pb.ExportCheckpointRequest(
        checkpoint=manifest.checkpoint_id, format=pb.EXPORT_FORMAT_FULL), timeout=120))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "safetensors" in details
    assert "/" not in details.replace("tenants/", "")  # no server path


def test_a_full_export_that_cannot_load_is_failed_precondition_without_paths(service: CheckpointService) -> None:
    files = write_checkpoint(service.store, "acme", "j/step-3", {"model.safetensors": b"not a safetensors file",
                                                                 "config.json": b"{}"})
    manifest = service.acme.RegisterCheckpoint(
        register_request("j", 3, "j/step-3", files, kind=pb.CHECKPOINT_KIND_FULL), timeout=30).manifest
    code, details = _code(lambda: service.acme.ExportCheckpoint(pb.ExportCheckpointRequest(
        checkpoint=manifest.checkpoint_id, format=pb.EXPORT_FORMAT_FULL), timeout=120))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "site-packages" not in details and "/tmp" not in details and ".cache" not in details


@pytest.mark.parametrize("seconds", [-1, 7 * 86400 + 1, 2**53, 2**31])
def test_download_url_expiry_has_a_documented_range(service: CheckpointService, seconds: int) -> None:
    files = write_checkpoint(service.store, "acme", "j/step-4", {"adapter_model.safetensors": b"w"})
    manifest = service.acme.RegisterCheckpoint(register_request("j", 4, "j/step-4", files), timeout=30).manifest
    code, details = _code(lambda: service.acme.GetDownloadUrl(pb.GetDownloadUrlRequest(
        checkpoint_id=manifest.checkpoint_id, path="adapter_model.safetensors", expires_in_seconds=seconds),
        timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expires_in_seconds" in details


@pytest.mark.parametrize("best, latest", [(-1, 1), (2**31 - 1, 1), (1, 2**31 - 1)])
def test_retention_counts_are_bounded(service: CheckpointService, best: int, latest: int) -> None:
    code, _ = _code(lambda: service.acme.SetRetentionPolicy(pb.SetRetentionPolicyRequest(
        job_id="j", policy=pb.RetentionPolicy(keep_best_n=best, keep_latest_m=latest, metric="eval_loss")),
        timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
