"""CheckpointService end to end: real gRPC server, real S3 server (versitygw), SQLite metadata."""

from __future__ import annotations

import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from tests.integration.checkpoints.conftest import CheckpointService, download, register_request
from tuneforge.checkpoints.adapters.hygiene import CheckpointJanitor
from tuneforge.checkpoints.adapters.objects import folder_key
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb
from tuneforge.common.errors import Unavailable
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter
from tuneforge.common.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.integration
ADAPTER = "adapter_model.safetensors"


def write_checkpoint(store: S3ObjectStore, tenant: str, prefix: str, files: dict[str, bytes],
                     writer: CheckpointWriter | None = None):
    """Write files as a training worker does; returns the artifact manifest's file entries."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return (writer or CheckpointWriter(store)).write(Path(tmp), folder_key(tenant, prefix)).files


def put_and_register(svc: CheckpointService, job: str, step: int, loss: float | None = None,
                     payload: bytes | None = None) -> pb.Manifest:
    prefix = f"{job}/step-{step}"
    data = payload if payload is not None else os.urandom(64 << 10)
    files = write_checkpoint(svc.store, "acme", prefix, {ADAPTER: data, "trainer_state.json": b"{}"})
    return svc.acme.RegisterCheckpoint(register_request(job, step, prefix, files, loss), timeout=60).manifest


def test_s3_outage_mid_upload_leaves_no_partial_checkpoint_and_retry_completes(
        service: CheckpointService, s3_server) -> None:
    first = put_and_register(service, "job1", 1, payload=b"a" * (1 << 20))
    big = {ADAPTER: os.urandom(40 << 20), "trainer_state.json": b'{"step": 2}'}
    flaky = S3ObjectStore(bucket=service.store.bucket, endpoint=s3_server.endpoint, access_key=s3_server.access_key,
                          secret_key=s3_server.secret_key, secure=False, part_size=5 << 20, retries=1,
                          backoff_s=0.1, parallel_uploads=1)
    writer = CheckpointWriter(flaky, retries=0)
    raw = s3_server.client()

    def stop_when_upload_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not raw._list_multipart_uploads(service.store.bucket).uploads:
            time.sleep(0.02)
        s3_server.stop()

    stopper = threading.Thread(target=stop_when_upload_started)
    stopper.start()
    with pytest.raises(Unavailable):
        write_checkpoint(flaky, "acme", "job1/step-2", big, writer)
    stopper.join()
    try:
        listed = service.acme.ListCheckpoints(pb.ListCheckpointsRequest(job_id="job1"), timeout=30).checkpoints
        assert [m.step for m in listed] == [1]  # the metadata side still answers; nothing partial
    finally:
        s3_server.start()
    with pytest.raises(grpc.RpcError) as info:  # registering the half-written folder is refused
        files = [pb.FileEntry(path=ADAPTER, size=len(big[ADAPTER]), sha256="0" * 64)]
        service.acme.RegisterCheckpoint(pb.RegisterCheckpointRequest(
            job_id="job1", step=2, kind=pb.CHECKPOINT_KIND_LORA, prefix="job1/step-2", files=files), timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert download(service.acme, first.checkpoint_id, ADAPTER) == b"a" * (1 << 20)
    files = write_checkpoint(service.store, "acme", "job1/step-2", big)  # the retry
    second = service.acme.RegisterCheckpoint(register_request("job1", 2, "job1/step-2", files), timeout=60).manifest
    assert download(service.acme, second.checkpoint_id, ADAPTER) == big[ADAPTER]
    latest = service.acme.GetLatestCompleteCheckpoint(pb.GetLatestCompleteCheckpointRequest(job_id="job1"))
    assert latest.manifest.checkpoint_id == second.checkpoint_id
    janitor = CheckpointJanitor(service.store, None, upload_timeout=timedelta(0))  # type: ignore[arg-type]
    assert janitor.abort_stale_uploads() >= 1  # the interrupted multipart upload
    assert not raw._list_multipart_uploads(service.store.bucket).uploads


def test_flipped_byte_fails_with_data_loss_and_resume_falls_back(service: CheckpointService, s3_server) -> None:
    one = put_and_register(service, "job1", 1)
    two = put_and_register(service, "job1", 2)
    stored = s3_server.data_dir / service.store.bucket / folder_key("acme", "job1/step-2") / ADAPTER
    data = bytearray(stored.read_bytes())
    data[1000] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as info:
        download(service.acme, two.checkpoint_id, ADAPTER)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert f"file '{ADAPTER}' of checkpoint {two.checkpoint_id} is corrupt" in info.value.details()
    with pytest.raises(grpc.RpcError) as resumed:
        download(service.acme, two.checkpoint_id, ADAPTER, offset=50_000)
    assert resumed.value.code() == grpc.StatusCode.DATA_LOSS
    latest = service.acme.GetLatestCompleteCheckpoint(pb.GetLatestCompleteCheckpointRequest(job_id="job1"))
    assert (latest.found, latest.manifest.checkpoint_id) == (True, one.checkpoint_id)


def test_download_resumes_by_offset(service: CheckpointService) -> None:
    payload = os.urandom(3 << 20)
    m = put_and_register(service, "job1", 1, payload=payload)
    chunks = list(service.acme.DownloadFile(pb.DownloadFileRequest(checkpoint_id=m.checkpoint_id, path=ADAPTER)))
    assert [c.sha256 for c in chunks[:-1]] == [""] * (len(chunks) - 1) and chunks[-1].sha256
    assert download(service.acme, m.checkpoint_id, ADAPTER, offset=1_234_567) == payload[1_234_567:]


def test_retention_keeps_exactly_the_right_set_and_aliases_survive(service: CheckpointService) -> None:
    stub = service.acme
    stub.SetRetentionPolicy(pb.SetRetentionPolicyRequest(
        job_id="job1", policy=pb.RetentionPolicy(keep_best_n=1, keep_latest_m=2, metric="eval_loss")))
    ids = {}
    for step, loss in {1: 0.9, 2: 0.2, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.5}.items():
        ids[step] = put_and_register(service, "job1", step, loss).checkpoint_id
        if step == 1:
            stub.SetAlias(pb.SetAliasRequest(job_id="job1", alias="production", checkpoint_id=ids[1]))
    listed = stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id="job1")).checkpoints
    assert [m.step for m in listed] == [1, 2, 5, 6]  # production, best, latest two
    aliases = {a.name: a for a in stub.ListAliases(pb.ListAliasesRequest(job_id="job1")).aliases}
    assert aliases["production"].checkpoint_id == ids[1]
    assert aliases["latest"].checkpoint_id == ids[6] and len(aliases["latest"].history) == 6
    assert aliases["best"].checkpoint_id == ids[2]
    with pytest.raises(grpc.RpcError) as info:
        stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(checkpoint_id=ids[1]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.SetAlias(pb.SetAliasRequest(job_id="job1", alias="production", checkpoint_id=ids[6]))
    kept = stub.ApplyRetention(pb.ApplyRetentionRequest(job_id="job1"))
    assert (list(kept.deleted), sorted(kept.kept)) == ([ids[1]], sorted([ids[2], ids[5], ids[6]]))
    assert not list(service.store.list(folder_key("acme", "job1/step-1")))


def test_presigned_url_works_then_expires(service: CheckpointService) -> None:
    payload = os.urandom(10_000)
    m = put_and_register(service, "job1", 1, payload=payload)

    def url(seconds: int) -> str:
        return service.acme.GetDownloadUrl(pb.GetDownloadUrlRequest(checkpoint_id=m.checkpoint_id, path=ADAPTER,
                                                                    expires_in_seconds=seconds)).url
    # Works while valid (a generous expiry: no race with a loaded machine) ...
    with urllib.request.urlopen(url(600), timeout=10) as r:
        assert r.read() == payload
    # ... and a short-lived one is refused once expired (polled: expiry is the server's clock).
    assert _refused_once_expired(url(1)) == 403
    with pytest.raises(grpc.RpcError) as bad:
        service.acme.GetDownloadUrl(pb.GetDownloadUrlRequest(checkpoint_id=m.checkpoint_id, path=ADAPTER,
                                                             expires_in_seconds=8 * 86400))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _refused_once_expired(url: str, within_s: float = 60.0) -> int | None:
    """Poll the URL until the server refuses it; None if it never does within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=10).close()
        except urllib.error.HTTPError as err:
            return err.code
        time.sleep(0.25)
    return None


def test_tenant_acme2_cannot_read_acme(service: CheckpointService) -> None:
    m = put_and_register(service, "job1", 1)
    other = service.acme2
    assert list(other.ListCheckpoints(pb.ListCheckpointsRequest(job_id="job1")).checkpoints) == []
    for call in (lambda: other.GetManifest(pb.GetManifestRequest(checkpoint=m.checkpoint_id)),
                 lambda: download(other, m.checkpoint_id, ADAPTER),
                 lambda: other.GetDownloadUrl(pb.GetDownloadUrlRequest(checkpoint_id=m.checkpoint_id, path=ADAPTER)),
                 lambda: other.DeleteCheckpoint(pb.DeleteCheckpointRequest(checkpoint_id=m.checkpoint_id, force=True))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    files = list(m.files)
    with pytest.raises(grpc.RpcError) as info:  # acme2 cannot register acme's files by escaping its prefix
        other.RegisterCheckpoint(pb.RegisterCheckpointRequest(
            job_id="job1", step=1, kind=pb.CHECKPOINT_KIND_LORA, prefix="../../acme/checkpoints/job1/step-1",
            files=files))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:  # same prefix resolves inside acme2's own root
        other.RegisterCheckpoint(register_request("job1", 1, "job1/step-1", files))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert service.acme.GetManifest(pb.GetManifestRequest(checkpoint="job1@latest")).manifest.step == 1
