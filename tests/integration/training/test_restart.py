"""A training service stopped mid-job: a new one on the same database and store resumes the job."""

from __future__ import annotations

import json

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.training.conftest import (
    delete_released_version,
    lora_request,
    upload_and_split,
    wait_job,
)
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _payload(events, kind):
    return [getattr(e, kind) for e in events if e.WhichOneof("payload") == kind]


def test_a_job_resumes_from_its_checkpoint_after_a_service_restart(cluster):
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    job = acme.training.CreateJob(lora_request(version_id, steps=30, every=3)).job
    # Stop the server right after the job's first registered checkpoint.
    first = None
    for event in acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id), timeout=120):
        if event.WhichOneof("payload") == "checkpoint_id":
            first = event.checkpoint_id
            break
    assert first
    cluster.training.server.stop(5)  # interrupts the run after its current step; the job stays unfinished
    stopped = cluster.training.settings

    cluster.start_training(data_dir=stopped.data_dir)  # same database, store and work folder
    acme = cluster.stack("acme")
    resumed = acme.training.GetJob(tr.GetJobRequest(job_id=job.id)).job
    assert resumed.status in (tr.JOB_STATUS_QUEUED, tr.JOB_STATUS_RUNNING)
    # The lease is still held while the job runs again.
    with pytest.raises(grpc.RpcError) as info:
        acme.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and job.id in info.value.details()
    done = wait_job(acme.training, job.id, timeout=240)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [entry.message for entry in _payload(events, "log")]
    assert any("re-queued" in m for m in logs), logs
    resumed_at = [m for m in logs if m.startswith("resumed from the checkpoint at step ")]
    assert resumed_at, logs
    step = int(resumed_at[0].split("step ")[1].split(" ")[0])
    assert step >= 3 and step % 3 == 0
    statuses = _payload(events, "status")
    assert statuses.count(tr.JOB_STATUS_RUNNING) == 2 and statuses[-1] == tr.JOB_STATUS_SUCCEEDED
    # Steps after the restart continue from the checkpoint, not from 0. (The first process may or
    # may not have trained past that checkpoint before it stopped, so look at what follows the log.)
    at = next(i for i, e in enumerate(events) if e.WhichOneof("payload") == "log" and e.log.message == resumed_at[0])
    after = [e.metrics.step for e in events[at:] if e.WhichOneof("payload") == "metrics" and e.metrics.loss]
    assert after[0] == step + 1 and after[-1] == 30
    assert after == sorted(after)
    assert done.status == tr.JOB_STATUS_SUCCEEDED and done.current_step == 30
    # The job's metrics file holds every metrics event, those of the first process too.
    stored = b"".join(c.data for c in acme.training.DownloadJobMetrics(tr.DownloadJobMetricsRequest(job_id=job.id)))
    assert [json.loads(line)["sequence"] for line in stored.splitlines()] == [
        e.sequence for e in events if e.WhichOneof("payload") == "metrics"]
    registered = [c.checkpoint_id for c in acme.training.ListJobCheckpoints(
        tr.ListJobCheckpointsRequest(job_id=job.id)).checkpoints]
    assert registered[0] == first and done.result_checkpoint_id in registered
    delete_released_version(acme, version_id, job.id)
