"""A training job with every service on the real S3 server (versitygw, our MinIO stand-in)."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.training.conftest import lora_request, upload_and_split, wait_job
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("cluster", ["s3"], indirect=True)
def test_lora_job_writes_and_registers_its_checkpoints_in_s3(cluster, s3_store):
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    job = acme.training.CreateJob(lora_request(version_id, steps=4, every=2)).job
    done = wait_job(acme.training, job.id, timeout=300)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    # The engine wrote the checkpoints into the bucket, manifest last, under the tenant's prefix.
    keys = [o.key for o in s3_store.list(f"tenants/acme/checkpoints/{job.id}/")]
    assert {k.split("/")[4] for k in keys} == {"step-2", "step-4"}
    assert all(k.startswith(f"tenants/acme/checkpoints/{job.id}/step-") for k in keys)
    # The checkpoint service verified and lists them; a file streams back with its sha256.
    listed = acme.checkpoints.ListCheckpoints(ck.ListCheckpointsRequest(job_id=job.id)).checkpoints
    assert sorted(m.step for m in listed) == [2, 4] and done.result_checkpoint_id in {m.checkpoint_id for m in listed}
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    adapter = next(f for f in manifest.files if f.path.endswith(".safetensors"))
    data = b"".join(c.data for c in acme.checkpoints.DownloadFile(
        ck.DownloadFileRequest(checkpoint_id=manifest.checkpoint_id, path=adapter.path)))
    assert len(data) == adapter.size and hashlib.sha256(data).hexdigest() == adapter.sha256
