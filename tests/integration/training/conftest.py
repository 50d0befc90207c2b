"""The training service with REAL dataset and checkpoint services, as users run it.

Three gRPC servers in-process (datasets, checkpoints, training) share one object store and one
models folder (holding the tiny base model as ``tiny-base``) and accept the same tenant tokens
(the training service calls its peers with the caller's own token, or after a restart with the
job's tenant's configured token).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tuneforge.checkpoints.app import build_app as build_checkpoints
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as ck_grpc
from tuneforge.common.grpc.client import channel
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.app import DatasetSettings
from tuneforge.datasets.app import build_app as build_datasets
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc
from tuneforge.training.app import build_app as build_training
from tuneforge.training.settings import TrainingSettings
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc as tr_grpc

BASE = "tiny-base"
FACTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
         "milk": "white", "night": "black"}
TEMPLATES = ["What colour is the {x}?", "Name the colour of the {x}.", "Tell me the colour of the {x}."]
TERMINAL = (tr.JOB_STATUS_SUCCEEDED, tr.JOB_STATUS_FAILED, tr.JOB_STATUS_CANCELLED)


@dataclass
class Stack:
    """Stubs of the three services for one tenant's token."""

    datasets: Any
    checkpoints: Any
    training: Any


@dataclass
class Cluster:
    """The running services, their shared settings, and a way to (re)start the training service."""

    stacks: dict[str, Stack]
    addresses: dict[str, str]
    tokens: dict[str, str]
    start_training: Any
    training: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stack(self, tenant: str = "acme") -> Stack:
        """Stubs for ``tenant`` against the current training server."""
        tok = self.tokens[tenant]
        return Stack(ds_grpc.DatasetServiceStub(channel(self.addresses["datasets"], tok, default_timeout=120)),
                     ck_grpc.CheckpointServiceStub(channel(self.addresses["checkpoints"], tok, default_timeout=60)),
                     tr_grpc.TrainingServiceStub(channel(self.training.address, tok, default_timeout=60)))


def _store_settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The shared store: a file:// folder, or (``cluster`` parametrized with "s3") a fresh bucket on
    the real S3 server, its credentials also in the environment as deployments set them (training
    workers read them from there: they never go into the spec saved beside each checkpoint)."""
    if getattr(request, "param", "file") != "s3":
        return {"object_store_uri": (tmp_path / "objects").as_uri()}
    server, store = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_store")
    monkeypatch.setenv("TUNEFORGE_S3_ACCESS_KEY", server.access_key)
    monkeypatch.setenv("TUNEFORGE_S3_SECRET_KEY", server.secret_key)
    return {"object_store_uri": server.uri(store.bucket), "s3_access_key": server.access_key,
            "s3_secret_key": server.secret_key}


@pytest.fixture
def cluster(request, make_service, tiny_model_dir, tmp_path, monkeypatch) -> Cluster:
    """Datasets + checkpoints + training on one store (file://, or S3 when parametrized with "s3");
    ``start_training()`` (re)starts training on the same database, store and work folder."""
    tokens = {"acme": secrets.token_urlsafe(24), "acme2": secrets.token_urlsafe(24)}
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / BASE)
    shared = {**_store_settings(request, tmp_path, monkeypatch), "models_dir": models,
              "auth_tokens": ",".join(f"{t}:{tok}" for t, tok in tokens.items())}
    datasets = make_service(DatasetSettings, build_datasets, **shared)
    checkpoints = make_service(CheckpointSettings, build_checkpoints, hygiene_interval_s=0, **shared)
    addresses = {"datasets": datasets.address, "checkpoints": checkpoints.address}
    c = Cluster({}, addresses, tokens, None, extra={"shared": shared, "checkpoints": checkpoints})

    def start_training(**overrides: Any) -> Any:
        values = {**shared, "datasets_address": datasets.address, "checkpoints_address": checkpoints.address,
                  "data_dir": tmp_path / "training", "train_poll_interval_s": 0.1, **overrides}
        c.training = make_service(TrainingSettings, build_training, **values)
        return c.training

    c.start_training = start_training
    start_training()
    return c


def upload_and_split(stack: Stack, name: str = "colours", *, validation: float = 0.2) -> str:
    """Upload Alpaca JSONL, curate with a train/validation/test split; returns the split version id."""
    rows = [{"instruction": t.format(x=x), "input": "", "output": f"The {x} is {c}."}
            for x, c in FACTS.items() for t in TEMPLATES]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def requests():
        yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name=name, file_name=f"{name}.jsonl"))
        yield ds.UploadDatasetRequest(chunk=data)

    uploaded = stack.datasets.UploadDataset(requests())
    run = stack.datasets.CurateDataset(ds.CurateDatasetRequest(
        version_id=uploaded.version.id, steps=[ds.CurationStep(exact_dedup=ds.ExactDedupStep())],
        split=ds.SplitConfig(validation_ratio=validation, test_ratio=0.1, seed=3))).run
    deadline = time.monotonic() + 120
    done = (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
            common_pb2.OPERATION_STATE_CANCELLED)
    while run.state not in done and time.monotonic() < deadline:
        time.sleep(0.1)
        run = stack.datasets.GetCurationRun(ds.GetCurationRunRequest(run_id=run.id)).run
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error.message
    return run.output_version_id


def lora_request(version_id: str, *, steps: int = 6, every: int = 2, **kw: Any) -> tr.CreateJobRequest:
    """A small LoRA SFT job on the tiny base."""
    fields: dict[str, Any] = {
        "base_model": BASE, "method": tr.METHOD_LORA, "objective": tr.OBJECTIVE_SFT, "dataset_version_id": version_id,
        "hyperparameters": tr.Hyperparameters(learning_rate=2e-3, max_steps=steps, micro_batch_size=4, lora_r=8,
                                              max_seq_length=96, seed=7),
        "schedule": tr.Schedule(eval_every_steps=every, save_every_steps=every)}
    return tr.CreateJobRequest(**{**fields, **kw})


def wait_job(stub: Any, job_id: str, timeout: float = 240) -> tr.Job:
    """Poll until the job ends."""
    deadline = time.monotonic() + timeout
    job = stub.GetJob(tr.GetJobRequest(job_id=job_id)).job
    while job.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        job = stub.GetJob(tr.GetJobRequest(job_id=job_id)).job
    return job


def delete_released_version(stack: Stack, version_id: str, job_id: str, timeout: float = 60) -> None:
    """Delete a dataset version the ended job ``job_id`` leased, once its lease is released.

    A run ends its job (the status turns terminal) and then releases its dataset leases, so a
    delete sent the moment GetJob says the job ended may still meet the lease: that one refusal
    (FAILED_PRECONDITION naming this job) is retried until ``timeout``; any other error fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))
            return
        except grpc.RpcError as exc:
            leased = exc.code() == grpc.StatusCode.FAILED_PRECONDITION and job_id in (exc.details() or "")
            if not leased or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def stored_job_dir(tmp_path: Path) -> Path:
    """The training service's data folder (database, work folder)."""
    return tmp_path / "training"
