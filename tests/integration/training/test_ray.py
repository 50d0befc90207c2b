"""A two-worker job through the engine's Ray path (Ray Train + DeepSpeed ZeRO-2 on CPU, gloo)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from tests.integration.training.conftest import lora_request, upload_and_split, wait_job
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_two_worker_zero2_job_on_ray_succeeds(cluster):
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    req = lora_request(version_id, steps=3, every=3, resources=tr.Resources(num_workers=2, zero_stage=2),
                       method=tr.METHOD_FULL)
    req.hyperparameters.micro_batch_size = 2
    job = acme.training.CreateJob(req).job
    done = wait_job(acme.training, job.id, timeout=420)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    assert done.resources.max_failures == 3 and done.current_step == 3 and done.restarts == 0
    losses = [e.metrics.loss for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.loss]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.kind == ck.CHECKPOINT_KIND_FULL and manifest.step == 3
