"""TrainingService end to end over gRPC with the real dataset and checkpoint services."""

from __future__ import annotations

import math

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.training.conftest import (
    BASE,
    delete_released_version,
    lora_request,
    upload_and_split,
    wait_job,
)
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lora_sft_job_streams_metrics_registers_checkpoints_and_succeeds(cluster):
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    job = acme.training.CreateJob(lora_request(version_id, steps=6, every=2, idempotency_key="k-1",
                                               labels={"team": "colours"})).job
    assert job.status in (tr.JOB_STATUS_QUEUED, tr.JOB_STATUS_RUNNING) and job.id.startswith("job_")
    assert job.hyperparameters.lora_alpha == 16 and job.hyperparameters.lr_scheduler == tr.LR_SCHEDULER_LINEAR
    # While the job is not finished its dataset version cannot be deleted.
    with pytest.raises(grpc.RpcError) as info:
        acme.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and job.id in info.value.details()

    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id), timeout=300))
    statuses = [e.status for e in events if e.WhichOneof("payload") == "status"]
    assert statuses[:3] == [tr.JOB_STATUS_VALIDATING, tr.JOB_STATUS_QUEUED, tr.JOB_STATUS_RUNNING]
    assert statuses[-1] == tr.JOB_STATUS_SUCCEEDED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    steps = [e.metrics for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.loss]
    assert [m.step for m in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(m.loss) and m.learning_rate > 0 for m in steps)
    evals = [e.metrics for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.eval_loss]
    assert evals and all(math.isfinite(m.eval_loss) for m in evals)
    ckpt_ids = [e.checkpoint_id for e in events if e.WhichOneof("payload") == "checkpoint_id"]
    assert len(ckpt_ids) == 3, [e.log.message for e in events if e.WhichOneof("payload") == "log"]

    done = acme.training.GetJob(tr.GetJobRequest(job_id=job.id)).job
    assert done.status == tr.JOB_STATUS_SUCCEEDED and done.current_step == 6 and done.total_steps == 6
    assert done.result_checkpoint_id in ckpt_ids and done.trained_tokens > 0 and done.finish_time.seconds
    listed = acme.checkpoints.ListCheckpoints(ck.ListCheckpointsRequest(job_id=job.id)).checkpoints
    assert done.result_checkpoint_id in {m.checkpoint_id for m in listed}
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.kind == ck.CHECKPOINT_KIND_LORA and manifest.lineage.base_model == BASE
    assert manifest.lineage.dataset_version_id == version_id and manifest.lineage.job_id == job.id
    mine = acme.training.ListJobCheckpoints(tr.ListJobCheckpointsRequest(job_id=job.id)).checkpoints
    assert [c.checkpoint_id for c in mine] == ckpt_ids and [c.step for c in mine] == [2, 4, 6]

    # Idempotency: the same key and body returns the same job; the same key with another body conflicts.
    again = acme.training.CreateJob(lora_request(version_id, steps=6, every=2, idempotency_key="k-1",
                                                 labels={"team": "colours"})).job
    assert again.id == job.id and again.status == tr.JOB_STATUS_SUCCEEDED
    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(lora_request(version_id, steps=7, idempotency_key="k-1"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and "k-1" in info.value.details()
    # The lease ended with the job: the version can be deleted now.
    delete_released_version(acme, version_id, job.id)

    # Listing: newest first, filters by status, method and labels.
    page = acme.training.ListJobs(tr.ListJobsRequest(labels={"team": "colours"})).jobs
    assert [j.id for j in page] == [job.id]
    assert not acme.training.ListJobs(tr.ListJobsRequest(labels={"team": "other"})).jobs
    assert not acme.training.ListJobs(tr.ListJobsRequest(statuses=[tr.JOB_STATUS_RUNNING])).jobs
    assert not acme.training.ListJobs(tr.ListJobsRequest(method=tr.METHOD_FULL)).jobs

    # Another tenant sees none of it.
    acme2 = cluster.stack("acme2")
    for call, req in ((acme2.training.GetJob, tr.GetJobRequest(job_id=job.id)),
                      (acme2.training.CancelJob, tr.CancelJobRequest(job_id=job.id)),
                      (acme2.training.ListJobCheckpoints, tr.ListJobCheckpointsRequest(job_id=job.id))):
        with pytest.raises(grpc.RpcError) as info:
            call(req)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        list(acme2.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert not acme2.training.ListJobs(tr.ListJobsRequest()).jobs


def test_bad_requests_name_every_field_and_unknown_references_are_not_found(cluster):
    acme = cluster.stack("acme")
    bad = tr.CreateJobRequest(
        hyperparameters=tr.Hyperparameters(warmup_steps=5, warmup_ratio=0.1, epochs=2, max_steps=3),
        resources=tr.Resources(zero_stage=4, offload_params=True),
        mixture=[tr.TaskMixture(dataset_version_id="dsv_x", weight=0)])
    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in bad_request_violations(info.value)}
    assert {"base_model", "method", "objective", "mixture[0].weight", "hyperparameters.warmup_ratio",
            "hyperparameters.max_steps", "resources.zero_stage", "resources.offload_params"} <= fields

    version_id = upload_and_split(acme)
    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(lora_request(version_id, base_model="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(lora_request("dsv_doesnotexist"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:  # a chat dataset cannot train DPO
        acme.training.CreateJob(lora_request(version_id, objective=tr.OBJECTIVE_DPO))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset_version_id" in {f for f, _ in bad_request_violations(info.value)}
    assert not acme.training.ListJobs(tr.ListJobsRequest()).jobs
    # Rejected creates hold no lease: the version can be deleted.
    acme.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))


def test_cancel_stops_a_running_job_and_is_final(cluster):
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    job = acme.training.CreateJob(lora_request(version_id, steps=5000, every=0)).job
    stream = acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id), timeout=300)
    seen = 0
    for event in stream:
        if event.WhichOneof("payload") == "metrics" and event.metrics.step >= 2:
            seen = event.metrics.step
            break
    stream.cancel()
    assert seen >= 2, "the job never reported step 2 before its stream ended"
    cancelled = acme.training.CancelJob(tr.CancelJobRequest(job_id=job.id)).job
    assert cancelled.status in (tr.JOB_STATUS_RUNNING, tr.JOB_STATUS_CANCELLED)
    done = wait_job(acme.training, job.id, timeout=60)
    assert done.status == tr.JOB_STATUS_CANCELLED
    assert seen <= done.current_step < 5000  # stopped where it was, not run to the end
    again = acme.training.CancelJob(tr.CancelJobRequest(job_id=job.id)).job
    assert again.status == tr.JOB_STATUS_CANCELLED
    # The whole event log ends with the cancellation: nothing the run did afterwards overwrote it.
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id), timeout=60))
    statuses = [e.status for e in events if e.WhichOneof("payload") == "status"]
    assert statuses and statuses[-1] == tr.JOB_STATUS_CANCELLED
    assert acme.training.GetJob(tr.GetJobRequest(job_id=job.id)).job.status == tr.JOB_STATUS_CANCELLED
    delete_released_version(acme, version_id, job.id)
