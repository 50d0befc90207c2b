"""Admission through a real training gRPC server (with the real dataset and checkpoint services):
a job that cannot fit is refused before queueing with the planner's numbers; EstimateJob plans and
creates nothing; a running job shows a measured pace and an estimated finish consistent with it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.integration.training.conftest import lora_request, upload_and_split, wait_job
from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.engine.planner import GIB
from tuneforge.engine.spec import load_spec
from tuneforge.training import convert
from tuneforge.training.domain.admission import Setup, plan
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OWNED = {"tenant": "acme", "output": {"checkpoint_uri": "file:///x", "checkpoint_prefix": "tenants/acme/checkpoints/",
                                      "run_name": "job_1"}}


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in the status details")


def _with_fix(req: tr.CreateJobRequest, change: str) -> tr.CreateJobRequest:
    """The request with a fix's ``field=value, ...`` applied."""
    out = tr.CreateJobRequest()
    out.CopyFrom(req)
    for item in change.split(", "):
        path, text = item.split("=")
        value: Any = {"true": True, "false": False}.get(text, int(text) if text.isdigit() else text)
        *parents, leaf = path.split(".")
        node: Any = out
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return out


def test_an_oversized_job_is_refused_with_the_numbers_and_estimate_creates_nothing(cluster, tiny_model_dir):
    req = lora_request("dsv_x", steps=4, every=2)
    asked = {k: v for k, v in convert.job_request(req).spec.items() if k != "schedule"}  # memory needs no schedule
    spec = load_spec({**asked, **OWNED})
    need = plan(spec, json.loads((tiny_model_dir / "config.json").read_text()), Setup.of(spec)).total
    # A CPU worker of exactly the job's need: 90% of it is usable, so the job does not fit.
    cluster.start_training(train_cpu_worker_memory_gib=need / GIB)
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    req.dataset_version_id = version_id

    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(req)
    err = info.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"needs {need / GIB:.2f} GiB per CPU" in err.details() and "usable" in err.details()
    meta = _error_info(err)
    assert meta.reason == "JOB_DOES_NOT_FIT" and meta.metadata["needed_memory_bytes"] == str(need)
    assert int(meta.metadata["usable_memory_bytes"]) < need
    fields = [f for f, _ in bad_request_violations(err)]
    assert fields and all("." in f or f == "method" for f in fields)
    assert not acme.training.ListJobs(tr.ListJobsRequest()).jobs  # refused before anything was stored

    got = acme.training.EstimateJob(tr.EstimateJobRequest(job=req)).plan
    assert not got.fits and got.memory_known and got.device == "cpu" and got.memory_per_device.total == need
    assert got.usable_memory_bytes == int(meta.metadata["usable_memory_bytes"]) and got.reasons
    assert got.fixes and all(f.memory_per_device_bytes <= got.usable_memory_bytes for f in got.fixes)
    assert got.total_steps == 4 and got.tokens > 0 and got.tokens_source
    assert got.trainable_parameters > 0 and got.parameters > got.trainable_parameters
    assert not got.HasField("estimated_duration")  # no throughput measured yet
    assert not acme.training.ListJobs(tr.ListJobsRequest()).jobs  # EstimateJob creates nothing

    # The first fix offered is admitted and trains.
    fixed = _with_fix(req, got.fixes[0].change)
    assert acme.training.EstimateJob(tr.EstimateJobRequest(job=fixed)).plan.fits
    job = acme.training.CreateJob(fixed).job
    assert wait_job(acme.training, job.id).status == tr.JOB_STATUS_SUCCEEDED

    # Estimates are tenant-scoped like CreateJob: another tenant cannot see the version.
    with pytest.raises(grpc.RpcError) as info:
        cluster.stack("acme2").training.EstimateJob(tr.EstimateJobRequest(job=req))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_running_job_has_an_estimated_finish_from_its_measured_pace(cluster):
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    req = lora_request(version_id, steps=200_000, every=0)
    before = acme.training.EstimateJob(tr.EstimateJobRequest(job=req)).plan
    assert before.fits and before.total_steps == 200_000 and before.tokens_per_second == 0

    job = acme.training.CreateJob(req).job
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        before = datetime.now(UTC)
        job = acme.training.GetJob(tr.GetJobRequest(job_id=job.id)).job
        after = datetime.now(UTC)
        if job.HasField("estimated_finish") and job.current_step >= 5:
            break
        time.sleep(0.2)
    assert job.status == tr.JOB_STATUS_RUNNING and job.HasField("estimated_finish"), job
    assert job.steps_per_second > 0 and job.tokens_per_second > 0
    expected = (job.total_steps - job.current_step) / job.steps_per_second
    finish = job.estimated_finish.ToDatetime(tzinfo=UTC)
    # Made from the same figures when the step read back was saved: before the read ended, and no
    # later than a few steps before it began (the next step's save would have been read instead).
    assert finish > after
    assert (finish - after).total_seconds() <= expected, (finish, after, expected)
    assert (finish - before).total_seconds() >= expected - 3 / job.steps_per_second - 5, (finish, before, expected)

    acme.training.CancelJob(tr.CancelJobRequest(job_id=job.id))
    done = wait_job(acme.training, job.id)
    assert done.status == tr.JOB_STATUS_CANCELLED and not done.HasField("estimated_finish")
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert any(m.startswith("admitted on 1 CPU worker(s): planned peak") for m in logs), logs

    # The measured throughput now times the next estimate of the same base model and method.
    after = acme.training.EstimateJob(tr.EstimateJobRequest(job=req)).plan
    assert after.throughput_jobs == 1 and after.tokens_per_second == pytest.approx(done.tokens_per_second)
    assert after.HasField("estimated_duration")
    assert after.estimated_duration.ToTimedelta().total_seconds() == pytest.approx(
        after.tokens / after.tokens_per_second, rel=1e-3)
