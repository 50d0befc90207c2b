"""Evaluation and merged export as Ray tasks on a cluster that cannot read the services' disks.

The same isolation as ``test_isolated_workers``: the Ray cluster runs in its own mount namespace
with the test's whole temp folder (every service's data folder, the models folder) hidden under an
empty tmpfs; the services share the real S3 server. A LoRA job trains there, then the evaluation
service (``TUNEFORGE_EVAL_RAY_ADDRESS``, every evaluation on Ray) scores its checkpoint and the
checkpoint service (``TUNEFORGE_EXPORT_RAY_ADDRESS``) exports it merged: both tasks can only have
read the model, the adapter and the checkpoint by store reference, and the export must be in the
store, complete, written by the task.
"""

from __future__ import annotations

import math
import os
import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from safetensors.numpy import load_file

from tests.integration.training.conftest import lora_request, upload_and_split, wait_job
from tests.integration.training.test_isolated_workers import _connect, hidden_ray  # noqa: F401
from tuneforge.checkpoints.app import build_app as build_checkpoints
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as ck_grpc
from tuneforge.common.grpc.client import channel
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.artifacts import read_manifest
from tuneforge.common.v1 import common_pb2
from tuneforge.evaluation.app import build_app as build_evaluation
from tuneforge.evaluation.settings import EvaluationSettings
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.evaluation.v1 import evaluation_pb2_grpc as ev_grpc
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVAL_TERMINAL = (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
                 common_pb2.OPERATION_STATE_CANCELLED)


def _files_under(folder) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize("cluster", ["s3"], indirect=True)
def test_evaluation_and_merged_export_run_on_ray_reading_only_the_store(cluster, hidden_ray, make_service, tmp_path):  # noqa: F811
    import ray

    _connect(hidden_ray)
    assert ray.get(ray.remote(lambda p: os.path.exists(p)).remote(str(tmp_path))) is False, \
        "the cluster can read the services' folders: the proof would prove nothing"
    cluster.training.server.stop(1)
    cluster.start_training(data_dir=tmp_path / "training", train_ray_address=hidden_ray)
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    job = acme.training.CreateJob(lora_request(version_id, steps=2, every=2,
                                               resources=tr.Resources(num_workers=1))).job
    done = wait_job(acme.training, job.id, timeout=900)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)
    checkpoint_id = done.result_checkpoint_id
    shared, token = cluster.extra["shared"], cluster.tokens["acme"]

    # Evaluation: every evaluation above 0 samples goes to Ray; the service downloads nothing.
    evaluation = make_service(EvaluationSettings, build_evaluation, datasets_address=cluster.addresses["datasets"],
                              checkpoints_address=cluster.addresses["checkpoints"], eval_ray_address=hidden_ray,
                              eval_inline_threshold_samples=0, **shared)
    stub = ev_grpc.EvaluationServiceStub(channel(evaluation.address, token, default_timeout=60))
    created = stub.CreateEvaluation(ev.CreateEvaluationRequest(
        model=ev.ModelRef(checkpoint_id=checkpoint_id), datasets=[ev.EvalDataset(version_id=version_id, split="test")],
        metrics=[ev.METRIC_PERPLEXITY])).evaluation
    messages = []
    for event in stub.StreamEvaluationProgress(ev.StreamEvaluationProgressRequest(evaluation_id=created.id), timeout=600):
        messages.append(event.message)
        if event.state in EVAL_TERMINAL:
            break
    e = stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=created.id)).evaluation
    assert e.state == common_pb2.OPERATION_STATE_SUCCEEDED, f"{e.error.code}: {e.error.message}"
    assert "running on ray" in messages, messages
    values = {m.name: m.value for r in e.results for m in r.metrics}
    assert math.isfinite(values["perplexity"]) and values["perplexity"] > 1
    assert _files_under(evaluation.settings.data_dir / "cache" / "models") == [], \
        "the evaluation service downloaded the model although the Ray task reads it from the store"

    # Merged export on Ray: a checkpoint service on the same database and store, exports on the cluster.
    checkpoints = cluster.extra["checkpoints"]
    exporter = make_service(CheckpointSettings, build_checkpoints, hygiene_interval_s=0,
                            data_dir=checkpoints.settings.data_dir, export_ray_address=hidden_ray, **shared)
    ck_stub = ck_grpc.CheckpointServiceStub(channel(exporter.address, token, default_timeout=60))
    started = time.monotonic()
    merged = ck_stub.ExportCheckpoint(ck.ExportCheckpointRequest(checkpoint=checkpoint_id,
                                                                 format=ck.EXPORT_FORMAT_MERGED), timeout=600)
    store = open_object_store(shared["object_store_uri"], access_key=shared["s3_access_key"],
                              secret_key=shared["s3_secret_key"])
    prefix = merged.uri.split("?", 1)[0].split(f"/{store.uri.split('?', 1)[0].rstrip('/').rsplit('/', 1)[-1]}/", 1)[1]
    manifest = read_manifest(store, prefix)
    assert manifest.extra["checkpoint_id"] == checkpoint_id and manifest.extra["format"] == "merged"
    weights = [f for f in manifest.files if f.path.endswith(".safetensors")]
    assert weights and {f.path for f in merged.files} == {f.path for f in manifest.files}
    local = tmp_path / "merged.safetensors"
    store.get_file(prefix + weights[0].path, local)
    tensors = load_file(str(local))
    assert tensors and not any("lora_" in name for name in tensors), "a merged export holds no LoRA matrices"
    assert _files_under(checkpoints.settings.data_dir / "work") == [], \
        f"the export ran in the service ({time.monotonic() - started:.0f}s), not on Ray"
