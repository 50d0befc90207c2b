"""Every service serves Prometheus metrics on TUNEFORGE_METRICS_PORT: the four real services, real
calls (OK and failing), then ``/metrics`` scraped over HTTP and read with the Prometheus parser;
a tiny real job, then its job and training series, and its log lines' correlation fields."""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.training.conftest import BASE, lora_request, upload_and_split, wait_job
from tuneforge.checkpoints.app import build_app as build_checkpoints
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as ck_grpc
from tuneforge.common.grpc.client import channel
from tuneforge.common.logging import ContextFilter
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.app import DatasetSettings
from tuneforge.datasets.app import build_app as build_datasets
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc
from tuneforge.evaluation.app import build_app as build_evaluation
from tuneforge.evaluation.settings import EvaluationSettings
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.evaluation.v1 import evaluation_pb2_grpc as ev_grpc
from tuneforge.training.app import build_app as build_training
from tuneforge.training.settings import TrainingSettings
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc as tr_grpc

pytestmark = [pytest.mark.integration]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(address: str) -> Samples:
    """Every sample of ``http://address/metrics``, by (name, labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _delta(before: Samples, after: Samples) -> Any:
    """``delta(name, **labels)``: how much the matching samples grew between two scrapes."""
    return lambda metric, **labels: value(after, metric, **labels) - value(before, metric, **labels)


@dataclass
class Service:
    address: str
    metrics: str
    stub: Any


@dataclass
class Stack:
    services: dict[str, Service]
    tokens: dict[str, str]


@pytest.fixture
def stack(make_service, tiny_model_dir, tmp_path) -> Stack:
    """The four services on one file:// store, each with a /metrics endpoint on 127.0.0.1."""
    tokens = {"acme": secrets.token_urlsafe(24), "acme2": secrets.token_urlsafe(24)}
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / BASE)
    shared = {"object_store_uri": (tmp_path / "objects").as_uri(), "models_dir": models,
              "auth_tokens": ",".join(f"{t}:{tok}" for t, tok in tokens.items())}
    started: dict[str, Any] = {}
    started["datasets"] = make_service(DatasetSettings, build_datasets, metrics_port=_free_port(), **shared)
    started["checkpoints"] = make_service(CheckpointSettings, build_checkpoints, metrics_port=_free_port(),
                                          hygiene_interval_s=0, **shared)
    peers = {"datasets_address": started["datasets"].address, "checkpoints_address": started["checkpoints"].address}
    started["training"] = make_service(TrainingSettings, build_training, metrics_port=_free_port(),
                                       train_poll_interval_s=0.1, **peers, **shared)
    started["evaluation"] = make_service(EvaluationSettings, build_evaluation, metrics_port=_free_port(),
                                         **peers, **shared)
    stubs = {"datasets": ds_grpc.DatasetServiceStub, "checkpoints": ck_grpc.CheckpointServiceStub,
             "training": tr_grpc.TrainingServiceStub, "evaluation": ev_grpc.EvaluationServiceStub}
    services = {name: Service(h.address, h.server.metrics_endpoint.address,
                              stubs[name](channel(h.address, tokens["acme"], default_timeout=120)))
                for name, h in started.items()}
    return Stack(services, tokens)


# (service, list RPC and request, get RPC and a request naming nothing that exists)
CALLS = [
    ("datasets", "tuneforge.datasets.v1.DatasetService", "ListDatasets", ds.ListDatasetsRequest(),
     "GetDataset", ds.GetDatasetRequest(dataset="no-such-dataset")),
    ("checkpoints", "tuneforge.checkpoints.v1.CheckpointService", "ListCheckpoints", ck.ListCheckpointsRequest(job_id="no-such-job"),
     "GetManifest", ck.GetManifestRequest(checkpoint="no-such-checkpoint")),
    ("training", "tuneforge.training.v1.TrainingService", "ListJobs", tr.ListJobsRequest(),
     "GetJob", tr.GetJobRequest(job_id="no-such-job")),
    ("evaluation", "tuneforge.evaluation.v1.EvaluationService", "ListEvaluations", ev.ListEvaluationsRequest(),
     "GetEvaluation", ev.GetEvaluationRequest(evaluation_id="no-such-evaluation")),
]


@pytest.mark.parametrize("calls", [3])
def test_every_service_counts_its_calls_by_method_and_code(stack, calls):
    for name, service, list_rpc, list_request, get_rpc, get_request in CALLS:
        svc = stack.services[name]
        before = scrape(svc.metrics)
        for _ in range(calls):
            getattr(svc.stub, list_rpc)(list_request)
        with pytest.raises(grpc.RpcError) as err:
            getattr(svc.stub, get_rpc)(get_request)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        unauthenticated = {"authorization": "Bearer wrong"}  # refused by the inner interceptor: still counted
        with pytest.raises(grpc.RpcError) as err:
            getattr(svc.stub, list_rpc)(list_request, metadata=tuple(unauthenticated.items()))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        after = scrape(svc.metrics)
        delta = _delta(before, after)

        lst = {"grpc_service": service, "grpc_method": list_rpc, "grpc_type": "unary"}
        get = {"grpc_service": service, "grpc_method": get_rpc, "grpc_type": "unary"}
        assert delta("grpc_server_started_total", **lst) == calls + 1, name
        assert delta("grpc_server_handled_total", **lst, grpc_code="OK") == calls, name
        assert delta("grpc_server_handled_total", **lst, grpc_code="UNAUTHENTICATED") == 1, name
        assert delta("grpc_server_handled_total", **get, grpc_code="NOT_FOUND") == 1, name
        assert delta("grpc_server_handled_total", **get, grpc_code="OK") == 0, name
        assert delta("grpc_server_handling_seconds_count", **lst) == calls + 1, name
        assert delta("grpc_server_handling_seconds_sum", **lst) > 0, name
        assert value(after, "grpc_server_handling_seconds_bucket", **lst, le="+Inf") == value(
            after, "grpc_server_handling_seconds_count", **lst), name
        assert value(after, "grpc_server_in_flight", **lst) == 0, name
        assert value(after, "grpc_server_in_flight", **get) == 0, name


class _Records(logging.Handler):
    """Keeps the records of every tuneforge logger, with the correlation fields bound when written."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records() -> Iterator[_Records]:
    handler, root = _Records(), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.mark.slow
def test_a_tiny_job_shows_in_job_and_training_series_and_its_logs_carry_its_ids(stack, log_records):
    s = stack.services
    version = upload_and_split(_Stubs(s["datasets"].stub))
    job = s["training"].stub.CreateJob(lora_request(version, steps=4, every=2)).job
    done = wait_job(s["training"].stub, job.id)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, done.error.message

    training = scrape(s["training"].metrics)
    assert value(training, "tuneforge_training_jobs", tenant="acme", status="SUCCEEDED") == 1
    assert value(training, "tuneforge_training_queue_depth") == 0
    assert value(training, "tuneforge_training_job_transitions_total", tenant="acme", status="RUNNING") == 1
    assert value(training, "tuneforge_training_job_transitions_total", tenant="acme", status="SUCCEEDED") == 1
    assert value(training, "tuneforge_training_queue_wait_seconds_count", tenant="acme") == 1
    assert value(training, "tuneforge_training_steps_total", tenant="acme") >= 1
    assert value(training, "tuneforge_training_step_seconds_count", tenant="acme") >= 1
    assert value(training, "tuneforge_training_checkpoints_total", tenant="acme") >= 1
    assert value(training, "tuneforge_training_step", tenant="acme", job_id=job.id) == 4
    loss = value(training, "tuneforge_training_loss", tenant="acme", job_id=job.id)
    assert 0 < loss < 20  # a finite cross-entropy of a tiny vocabulary
    assert value(training, "tuneforge_training_tokens_per_second", tenant="acme", job_id=job.id) > 0
    assert value(training, "grpc_server_handled_total", grpc_method="CreateJob", grpc_code="OK") == 1
    # the checkpoints the job registered, and the curation that made its dataset
    checkpoints = scrape(s["checkpoints"].metrics)
    registered = value(checkpoints, "tuneforge_checkpoints_registered_total", tenant="acme")
    assert registered == value(training, "tuneforge_training_checkpoints_total", tenant="acme") >= 1
    assert value(checkpoints, "tuneforge_checkpoints_registered_bytes_total", tenant="acme") > 1000 * registered
    assert value(checkpoints, "grpc_server_handled_total", grpc_method="RegisterCheckpoint", grpc_code="OK") >= 1
    datasets = scrape(s["datasets"].metrics)
    assert value(datasets, "tuneforge_curation_runs_total", tenant="acme", state="SUCCEEDED") == 1
    assert value(datasets, "tuneforge_curation_rows_total", tenant="acme") > 0
    assert value(datasets, "tuneforge_curation_step_seconds_count") >= 1

    # an evaluation of the job's checkpoint
    created = s["evaluation"].stub.CreateEvaluation(ev.CreateEvaluationRequest(
        model=ev.ModelRef(checkpoint_id=done.result_checkpoint_id),
        datasets=[ev.EvalDataset(version_id=version, split="test")], metrics=[ev.METRIC_PERPLEXITY])).evaluation
    evaluated = _wait_evaluation(s["evaluation"].stub, created.id)
    assert evaluated.state == common_pb2.OPERATION_STATE_SUCCEEDED, evaluated.error.message
    evaluation = scrape(s["evaluation"].metrics)
    assert value(evaluation, "tuneforge_evaluations_total", tenant="acme", state="SUCCEEDED") == 1
    assert value(evaluation, "tuneforge_evaluation_items_total", tenant="acme") > 0
    assert value(evaluation, "tuneforge_evaluation_seconds_count", state="SUCCEEDED") == 1
    # the progress stream the client left counts as ended once the server noticed (within a second)
    stream = {"grpc_method": "StreamEvaluationProgress", "grpc_type": "server_stream"}
    deadline = time.monotonic() + 60
    while value(evaluation, "grpc_server_open_streams", **stream) and time.monotonic() < deadline:
        time.sleep(0.1)
        evaluation = scrape(s["evaluation"].metrics)
    assert value(evaluation, "grpc_server_open_streams", **stream) == 0
    assert value(evaluation, "grpc_server_started_total", **stream) == 1
    assert value(evaluation, "grpc_server_handled_total", **stream) == 1

    records = log_records.records
    run_lines = [r for r in records if getattr(r, "ctx_job_id", "") == job.id]
    assert run_lines, "no log line of the run carries its job id"
    assert {getattr(r, "ctx_tenant", "") for r in run_lines} == {"acme"}
    assert all(len(getattr(r, "ctx_trace_id", "")) == 32 for r in run_lines)
    create = [r for r in records if getattr(r, "ctx_method", "").endswith("/CreateJob") and r.name == "tuneforge.rpc"]
    assert len(create) == 1 and getattr(create[0], "ctx_tenant", "") == "acme"
    assert getattr(create[0], "ctx_request_id", "")
    trace = create[0].ctx_trace_id
    # the run continues the trace of the call that queued it, and the peers of CreateJob log it too
    assert {r.ctx_trace_id for r in run_lines} == {trace}
    peer_lines = [r for r in records if r.name == "tuneforge.rpc" and getattr(r, "ctx_trace_id", "") == trace
                  and getattr(r, "ctx_method", "").startswith("/tuneforge.datasets.")]
    assert peer_lines, "the dataset service's log lines of CreateJob's peer calls lack its trace id"


def _wait_evaluation(stub: Any, evaluation_id: str) -> ev.Evaluation:
    """Follow the evaluation's progress stream until it ends."""
    request = ev.StreamEvaluationProgressRequest(evaluation_id=evaluation_id)
    ended = (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
             common_pb2.OPERATION_STATE_CANCELLED)
    for event in stub.StreamEvaluationProgress(request, timeout=300):
        if event.state in ended:
            break
    return stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation


@dataclass
class _Stubs:
    datasets: Any
