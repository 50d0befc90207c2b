"""A two-worker job through the engine's Ray path (Ray Train + DeepSpeed ZeRO-2 on CPU, gloo), with a
worker crash mid-job: the service counts the restart and the job succeeds."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from tests.integration.training.conftest import lora_request, upload_and_split, wait_job
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.engine.train.faults import FAULT_ENV
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_two_worker_zero2_job_on_ray_survives_a_worker_crash(cluster, tmp_path, monkeypatch):
    # Worker 1 dies (os._exit, as an OOM kill would) before step 3, once: Ray restarts the worker
    # group, the recipe resumes from the step-2 checkpoint and the job counts one restart.
    marker = tmp_path / "fault-fired"
    monkeypatch.setenv(FAULT_ENV, f"rank=1,step=3,marker={marker}")
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    req = lora_request(version_id, steps=4, every=2, resources=tr.Resources(num_workers=2, zero_stage=2),
                       method=tr.METHOD_FULL)
    req.hyperparameters.micro_batch_size = 2
    job = acme.training.CreateJob(req).job
    done = wait_job(acme.training, job.id, timeout=600)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    assert marker.exists()  # the crash really happened
    assert done.resources.max_failures == 3 and done.current_step == 4 and done.restarts == 1, logs
    assert any(m.startswith("workers restarted (restart 1)") for m in logs), logs
    assert any(m.startswith("resumed from the checkpoint at step 2") for m in logs), logs
    losses = {e.metrics.step: e.metrics.loss for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.loss}
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.kind == ck.CHECKPOINT_KIND_FULL and manifest.step in (2, 4)
