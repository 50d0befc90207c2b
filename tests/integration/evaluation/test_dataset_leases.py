"""An evaluation leases the dataset versions it reads, through the REAL dataset service.

Real gRPC servers in-process (datasets, checkpoints, evaluation) share one object store and one
set of tenant tokens. While an evaluation is unfinished the dataset service refuses to delete its
versions, naming the holder ``evaluation:<id>``; once it ends (succeeded, cancelled, or failed by a
restart of the evaluation service) the versions can be deleted; a create that fails leaves neither
a lease nor an evaluation.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from datetime import UTC, datetime

import grpc
import pytest

pytest.importorskip("torch")

from tuneforge.checkpoints.app import build_app as build_checkpoints
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.common import db
from tuneforge.common.grpc.client import channel
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.app import DatasetSettings
from tuneforge.datasets.app import build_app as build_datasets
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc
from tuneforge.evaluation.adapters.sql import SqlEvaluationRepository
from tuneforge.evaluation.app import MIGRATIONS_DIR, VERSION_TABLE
from tuneforge.evaluation.app import build_app as build_evaluation
from tuneforge.evaluation.domain.model import DatasetRef, Evaluation, EvaluationSpec, Metric, ModelRef, State
from tuneforge.evaluation.domain.service import new_evaluation_id
from tuneforge.evaluation.settings import EvaluationSettings
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.evaluation.v1 import evaluation_pb2_grpc as ev_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "tiny-base"
TERMINAL = (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
            common_pb2.OPERATION_STATE_CANCELLED)


class Stack:
    """The peers' stubs as tenant acme, and what it takes to start (or restart) the evaluation service."""

    def __init__(self, make_service, shared: dict, tokens: dict[str, str], datasets_address: str,
                 checkpoints_address: str) -> None:
        self._make, self._shared = make_service, shared
        self._peers = {"datasets_address": datasets_address, "checkpoints_address": checkpoints_address}
        self.token = tokens["acme"]
        self.datasets = ds_grpc.DatasetServiceStub(channel(datasets_address, self.token, default_timeout=120))
        self.evaluation: ev_grpc.EvaluationServiceStub | None = None

    def start_evaluation(self, **overrides) -> ev_grpc.EvaluationServiceStub:
        """Start an evaluation service on the shared database and peers; returns acme's stub."""
        handle = self._make(EvaluationSettings, build_evaluation, **self._peers, **self._shared, **overrides)
        self.evaluation = ev_grpc.EvaluationServiceStub(channel(handle.address, self.token, default_timeout=60))
        return self.evaluation

    def upload(self, name: str, rows: int) -> str:
        """An unsplit chat dataset of ``rows`` rows; returns its version id."""
        records = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                 {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(rows)]
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        meta = ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name=name, file_name=f"{name}.jsonl"))
        response = self.datasets.UploadDataset(iter([meta, ds.UploadDatasetRequest(chunk=data)]), timeout=120)
        assert response.validation.rows_accepted == rows
        return response.version.id

    def delete_refused(self, version_id: str) -> str:
        """Delete the version expecting FAILED_PRECONDITION; returns the refusal's message."""
        with pytest.raises(grpc.RpcError) as info:
            self.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
        return info.value.details()

    def delete(self, version_id: str) -> None:
        """Delete the version (raises when it is still leased) and check it is gone."""
        self.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=version_id))
        with pytest.raises(grpc.RpcError) as info:
            self.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(version_id=version_id))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def stack(make_service, tiny_model_dir, tmp_path) -> Stack:
    """Datasets and checkpoints servers; the evaluation service is started by each test (``start_evaluation``)."""
    tokens = {"acme": secrets.token_urlsafe(24), "acme2": secrets.token_urlsafe(24)}
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / BASE)
    shared = {"object_store_uri": (tmp_path / "objects").as_uri(), "models_dir": models,
              "auth_tokens": ",".join(f"{t}:{tok}" for t, tok in tokens.items())}
    datasets = make_service(DatasetSettings, build_datasets, **shared)
    checkpoints = make_service(CheckpointSettings, build_checkpoints, hygiene_interval_s=0, **shared)
    # One evaluation database, so that a restarted service finds what an earlier one left.
    shared["database_url"] = f"sqlite:///{tmp_path / 'evaluation.db'}"
    return Stack(make_service, shared, tokens, datasets.address, checkpoints.address)


def _request(version_id: str, *, forgetting: str = "", max_new_tokens: int = 4) -> ev.CreateEvaluationRequest:
    extra = {}
    if forgetting:  # the forgetting set is read (and leased) too; it needs a baseline
        extra = {"baseline": ev.ModelRef(base_model=BASE), "forgetting_dataset": ev.EvalDataset(version_id=forgetting)}
    metrics = [ev.METRIC_ROUGE] + ([ev.METRIC_FORGETTING] if forgetting else [])
    return ev.CreateEvaluationRequest(
        model=ev.ModelRef(base_model=BASE), datasets=[ev.EvalDataset(version_id=version_id)], metrics=metrics,
        generation=ev.GenerationConfig(max_new_tokens=max_new_tokens, batch_size=1), **extra)


def _wait(stub: ev_grpc.EvaluationServiceStub, evaluation_id: str, timeout: float = 300) -> ev.Evaluation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        e = stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
        if e.state in TERMINAL:
            return e
        time.sleep(0.1)
    raise AssertionError(f"evaluation {evaluation_id} did not end in {timeout} s")


def _wait_running(stub: ev_grpc.EvaluationServiceStub, evaluation_id: str) -> None:
    """Return once the run has scored some examples (it is truly running, not queued)."""
    stream = stub.StreamEvaluationProgress(ev.StreamEvaluationProgressRequest(evaluation_id=evaluation_id), timeout=300)
    for event in stream:
        assert event.state not in TERMINAL, f"ended before it was seen running: {event.message}"
        if event.state == common_pb2.OPERATION_STATE_RUNNING and event.done > 0:
            stream.cancel()
            return
    raise AssertionError("the progress stream ended without a running event")


def test_versions_are_leased_while_an_evaluation_runs_and_freed_when_it_ends(stack: Stack) -> None:
    stub = stack.start_evaluation(eval_workers=1)
    long_version, queued_version = stack.upload("long", 150), stack.upload("queued", 3)

    # A long run (150 examples, 64 tokens each, one at a time) holds the only worker.
    running = stub.CreateEvaluation(_request(long_version, max_new_tokens=64)).evaluation
    queued = stub.CreateEvaluation(_request(queued_version)).evaluation
    _wait_running(stub, running.id)
    refusal = stack.delete_refused(long_version)
    assert f"evaluation:{running.id}" in refusal and long_version in refusal
    assert f"evaluation:{queued.id}" in stack.delete_refused(queued_version)  # queued: leased already
    assert stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=running.id)).evaluation.state == \
        common_pb2.OPERATION_STATE_RUNNING  # the refusal above happened during the run

    # Cancelled while queued: the lease is released before the cancel call returns.
    cancelled = stub.CancelEvaluation(ev.CancelEvaluationRequest(evaluation_id=queued.id)).evaluation
    assert cancelled.state == common_pb2.OPERATION_STATE_CANCELLED
    stack.delete(queued_version)

    # Cancelled while running: the run ends itself CANCELLED; once ended, the version is free.
    stub.CancelEvaluation(ev.CancelEvaluationRequest(evaluation_id=running.id))
    assert _wait(stub, running.id).state == common_pb2.OPERATION_STATE_CANCELLED
    stack.delete(long_version)


def test_a_succeeded_evaluation_releases_every_version_it_read(stack: Stack) -> None:
    stub = stack.start_evaluation()
    version, general = stack.upload("colours", 3), stack.upload("general", 3)
    created = stub.CreateEvaluation(_request(version, forgetting=general)).evaluation
    for v in (version, general):
        assert f"evaluation:{created.id}" in stack.delete_refused(v)
    done = _wait(stub, created.id)
    assert done.state == common_pb2.OPERATION_STATE_SUCCEEDED, f"{done.error.code}: {done.error.message}"
    # Ended means released: deleted straight after the terminal state is seen.
    stack.delete(version)
    stack.delete(general)


def test_a_create_with_an_unknown_version_leaves_no_lease_and_no_evaluation(stack: Stack) -> None:
    stub = stack.start_evaluation()
    known = stack.upload("known", 3)
    missing = "dsv_doesnotexist"
    request = _request(known)
    request.datasets.append(ev.EvalDataset(version_id=missing))  # leased after ``known``: that one is released
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateEvaluation(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and missing in info.value.details()
    assert not stub.ListEvaluations(ev.ListEvaluationsRequest()).evaluations
    stack.delete(known)  # no lease was left behind on the version that exists


def test_a_restart_fails_unfinished_evaluations_and_releases_their_leases(stack: Stack) -> None:
    version = stack.upload("orphaned", 3)
    # What a process that died mid-run leaves: the evaluation RUNNING in the database and its
    # lease held at the dataset service (taken with the creator's token, gone with that process).
    engine = db.create_db_engine(stack._shared["database_url"])
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    spec = EvaluationSpec(model=ModelRef(base_model=BASE), datasets=(DatasetRef(version),), metrics=(Metric.ROUGE,))
    orphan = SqlEvaluationRepository(db.make_sessionmaker(engine)).add(
        Evaluation(new_evaluation_id(), "acme", spec, State.RUNNING, datetime.now(UTC)))
    engine.dispose()
    holder = f"evaluation:{orphan.id}"
    stack.datasets.AcquireVersionLease(ds.AcquireVersionLeaseRequest(version_id=version, holder=holder))
    assert holder in stack.delete_refused(version)

    stub = stack.start_evaluation()  # fails the orphan and releases its lease as acme (configured token)
    e = stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=orphan.id)).evaluation
    assert e.state == common_pb2.OPERATION_STATE_FAILED and e.error.code == "ABORTED"
    stack.delete(version)
