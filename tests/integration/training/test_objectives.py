"""The other objectives through the API: DPO and SimPO on preference pairs, and a weighted multi-task mixture."""

from __future__ import annotations

import json
import math

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
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = pytest.mark.integration


def _upload(stack, name: str, rows: list[dict]) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def requests():
        yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name=name, file_name=f"{name}.jsonl"))
        yield ds.UploadDatasetRequest(chunk=data)

    return stack.datasets.UploadDataset(requests()).version.id


def _losses(stack, job_id: str) -> list[float]:
    events = stack.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job_id))
    return [e.metrics.loss for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.loss]


def test_dpo_job_on_preference_pairs_succeeds(cluster):
    acme = cluster.stack("acme")
    pairs = [{"prompt": f"What colour is the {x}?", "chosen": f"The {x} is {c}.", "rejected": f"The {x} is purple."}
             for x, c in [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
                          ("sun", "yellow"), ("milk", "white"), ("blood", "red"), ("night", "black")]]
    version_id = _upload(acme, "prefs", pairs)
    req = lora_request(version_id, steps=3, every=3, objective=tr.OBJECTIVE_DPO)
    req.hyperparameters.dpo_beta = 0.1
    # The raw version has no validation split: evaluating needs one, and the fix is in API terms.
    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_violations(info.value)] == ["schedule.eval_every_steps"]
    assert "set validation_dataset_version_id" in info.value.details() and "data.validation" not in info.value.details()
    req.schedule.eval_every_steps = 0
    job = acme.training.CreateJob(req).job
    done = wait_job(acme.training, job.id, timeout=300)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)
    losses = _losses(acme, job.id)
    # DPO's loss starts at log(2) (policy == reference) and is finite.
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.lineage.dataset_version_id == version_id and manifest.kind == ck.CHECKPOINT_KIND_LORA


def test_simpo_job_on_preference_pairs_succeeds_and_learns_the_preference(cluster):
    acme = cluster.stack("acme")
    pairs = [{"prompt": f"What colour is the {x}?", "chosen": f"The {x} is {c}.", "rejected": f"The {x} is purple."}
             for x, c in [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
                          ("sun", "yellow"), ("milk", "white"), ("blood", "red"), ("night", "black")]]
    version_id = _upload(acme, "simpo-prefs", pairs)
    req = lora_request(version_id, steps=4, every=4, objective=tr.OBJECTIVE_SIMPO)
    req.schedule.eval_every_steps = 0  # no validation split
    req.hyperparameters.learning_rate = 1e-2
    req.hyperparameters.simpo_beta = 2.0
    req.hyperparameters.simpo_gamma = 0.5
    job = acme.training.CreateJob(req).job
    assert job.objective == tr.OBJECTIVE_SIMPO
    done = wait_job(acme.training, job.id, timeout=300)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)
    losses = _losses(acme, job.id)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert min(losses[-2:]) < losses[0], losses
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.lineage.dataset_version_id == version_id and manifest.kind == ck.CHECKPOINT_KIND_LORA


def test_multi_task_mixture_job_succeeds_and_leases_every_component(cluster):
    acme = cluster.stack("acme")
    colours = upload_and_split(acme, "colours")
    sums = _upload(acme, "sums", [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}
                                  for a in range(4) for b in range(4)])
    req = lora_request("", steps=4, every=4, mixture=[tr.TaskMixture(dataset_version_id=colours, weight=2.0, task="colours"),
                                                       tr.TaskMixture(dataset_version_id=sums, weight=1.0, task="sums")])
    req.schedule.eval_every_steps = 0  # no validation version given for the mixture
    job = acme.training.CreateJob(req).job
    assert [m.task for m in job.mixture] == ["colours", "sums"]
    for version_id in (colours, sums):  # every component is leased while the job lives
        with pytest.raises(grpc.RpcError) as info:
            acme.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and job.id in info.value.details()
    done = wait_job(acme.training, job.id, timeout=300)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)
    assert len(_losses(acme, job.id)) == 4
    delete_released_version(acme, sums, job.id)  # released at the end
