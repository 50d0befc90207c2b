"""Two training replicas, each a real ``python -m tuneforge.training`` process, on one real PostgreSQL.

Datasets and checkpoints run in this process (real gRPC servers on the same file:// store); the
replicas share the database, the store and the models folder, and claim jobs with leases. The
tests kill or stop the replica that runs a job mid-training and check, from the job's events (each
written under a lease: replica and epoch, stored beside the event), that the other replica resumed
the job from its checkpoint and that no two runs of the job ever wrote at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.training.conftest import BASE, Stack, lora_request, upload_and_split, wait_job
from tuneforge.checkpoints.app import build_app as build_checkpoints
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as ck_grpc
from tuneforge.common.grpc.client import channel
from tuneforge.datasets.app import DatasetSettings
from tuneforge.datasets.app import build_app as build_datasets
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc as tr_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_ROOT = Path(__file__).resolve().parents[3]
STEPS = 12  # checkpoints every 3 steps: the takeover happens after the first, with steps still to train


@dataclass
class Replica:
    """A training service in its own process."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    address: str = ""

    def stub(self, token: str) -> Any:
        return tr_grpc.TrainingServiceStub(channel(self.address, token, default_timeout=60))

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@dataclass
class Fleet:
    """The peers (in-process), the replicas (processes), and what they share."""

    env: dict[str, str]
    tmp: Path
    token: str
    peers: dict[str, str]
    postgres_url: str
    replicas: dict[str, Replica]

    def start(self, name: str, **settings: Any) -> Replica:
        env = {**self.env, "TUNEFORGE_TRAIN_REPLICA_ID": name, "TUNEFORGE_DATA_DIR": str(self.tmp / name),
               **{f"TUNEFORGE_{k.upper()}": str(v) for k, v in settings.items()}}
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "tuneforge.training"], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, cwd=_ROOT)
        replica = Replica(name, process, log)
        self.replicas[name] = replica
        return replica

    def ready(self, replica: Replica, timeout: float = 180) -> Replica:
        """Wait for the process to print its address."""
        deadline = time.monotonic() + timeout
        while not replica.address:
            assert replica.process.poll() is None, f"{replica.name} exited:\n{replica.output()}"
            assert time.monotonic() < deadline, f"{replica.name} did not start:\n{replica.output()}"
            for line in replica.log.read_text(errors="replace").splitlines():
                if line.startswith("training listening on "):
                    replica.address = line.rsplit(" ", 1)[1]
            time.sleep(0.1)
        return replica

    def stack(self, replica: Replica) -> Stack:
        return Stack(ds_grpc.DatasetServiceStub(channel(self.peers["datasets"], self.token, default_timeout=120)),
                     ck_grpc.CheckpointServiceStub(channel(self.peers["checkpoints"], self.token, default_timeout=60)),
                     replica.stub(self.token))

    def lease_events(self, job_id: str) -> list[tuple[int, str, int, str, dict[str, Any]]]:
        """(sequence, replica, lease epoch, kind, data) of the job's events written under a lease."""
        engine = sa.create_engine(self.postgres_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT sequence, replica, lease_epoch, kind, data FROM train_events WHERE job_id = :job "
                    "AND lease_epoch IS NOT NULL ORDER BY sequence"), {"job": job_id}).all()
        finally:
            engine.dispose()
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


@pytest.fixture
def fleet(make_service, tiny_model_dir, tmp_path, postgres_url) -> Iterator[Fleet]:
    import secrets
    import shutil

    token = secrets.token_urlsafe(24)
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / BASE)
    shared = {"object_store_uri": (tmp_path / "objects").as_uri(), "models_dir": models,
              "auth_tokens": f"acme:{token}"}
    datasets = make_service(DatasetSettings, build_datasets, **shared)
    checkpoints = make_service(CheckpointSettings, build_checkpoints, hygiene_interval_s=0, **shared)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env |= {"PYTHONPATH": os.pathsep.join([str(_ROOT / "services"), env.get("PYTHONPATH", "")]),
            "TUNEFORGE_OBJECT_STORE_URI": shared["object_store_uri"], "TUNEFORGE_MODELS_DIR": str(models),
            "TUNEFORGE_AUTH_TOKENS": shared["auth_tokens"], "TUNEFORGE_DATABASE_URL": postgres_url,
            "TUNEFORGE_DATASETS_ADDRESS": datasets.address, "TUNEFORGE_CHECKPOINTS_ADDRESS": checkpoints.address,
            "TUNEFORGE_PORT": "0", "TUNEFORGE_TRAIN_POLL_INTERVAL_S": "0.1", "TUNEFORGE_TRAIN_DISPATCH_POLL_S": "0.2",
            "TUNEFORGE_GRACE_PERIOD_S": "2"}
    f = Fleet(env, tmp_path, token, {"datasets": datasets.address, "checkpoints": checkpoints.address},
              postgres_url, {})
    try:
        yield f
    finally:
        for replica in f.replicas.values():
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(timeout=30)


def _first_checkpoint(stub: Any, job_id: str) -> str:
    for event in stub.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job_id), timeout=180):
        if event.WhichOneof("payload") == "checkpoint_id":
            return str(event.checkpoint_id)
    raise AssertionError("the job ended before its first checkpoint")


def _check_one_live_run_at_a_time(fleet: Fleet, job_id: str, first: str, second: str) -> None:
    """Lease epochs only grow along the event log, each epoch is one replica's, and the second run
    (the other replica) resumed from a checkpoint and trained on from the step after it."""
    written = fleet.lease_events(job_id)
    epochs = [e for _, _, e, _, _ in written]
    assert epochs == sorted(epochs), written  # never a write of an older run after a newer one began
    owners = {}
    for _, replica, epoch, _, _ in written:
        assert owners.setdefault(epoch, replica) == replica, written
    assert [owners[e] for e in sorted(owners)] == [first, second], owners
    later = [d for _, r, _, k, d in written if r == second]
    resumed = [d["message"] for d in later if str(d.get("message", "")).startswith("resumed from the checkpoint")]
    assert resumed, later
    step = int(resumed[0].split("step ")[1].split(" ")[0])
    steps = [int(d["step"]) for d in later if "loss" in d]
    assert step >= 3 and steps[0] == step + 1 and steps == sorted(steps) and steps[-1] == STEPS


def _run_a_job(fleet: Fleet) -> tuple[Any, str, str, dict[str, Replica]]:
    """Start two replicas, create a job, wait for its first checkpoint; returns the owner's name."""
    a, b = fleet.start("replica-a"), fleet.start("replica-b")
    fleet.ready(a), fleet.ready(b)
    acme = fleet.stack(a)
    version_id = upload_and_split(acme)
    job = acme.training.CreateJob(lora_request(version_id, steps=STEPS, every=3)).job
    _first_checkpoint(acme.training, job.id)
    running = acme.training.GetJob(tr.GetJobRequest(job_id=job.id)).job
    assert running.status == tr.JOB_STATUS_RUNNING and running.replica in ("replica-a", "replica-b")
    assert running.lease_expire_time.seconds > 0
    return job, running.replica, version_id, {"replica-a": a, "replica-b": b}


def test_a_killed_replica_loses_its_job_to_the_other_which_resumes_it_from_its_checkpoint(fleet: Fleet) -> None:
    fleet.env["TUNEFORGE_TRAIN_LEASE_TTL_S"], fleet.env["TUNEFORGE_TRAIN_HEARTBEAT_INTERVAL_S"] = "4", "0.5"
    job, owner, _, replicas = _run_a_job(fleet)
    survivor = next(r for name, r in replicas.items() if name != owner)
    replicas[owner].process.send_signal(signal.SIGKILL)
    replicas[owner].process.wait(timeout=30)

    stub = survivor.stub(fleet.token)
    done = wait_job(stub, job.id, timeout=300)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.message, survivor.output())
    assert done.current_step == STEPS and done.result_checkpoint_id and done.replica == ""
    _check_one_live_run_at_a_time(fleet, job.id, owner, survivor.name)
    statuses = [e.status for e in stub.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id))
                if e.WhichOneof("payload") == "status"]
    assert statuses.count(tr.JOB_STATUS_RUNNING) == 2 and statuses[-1] == tr.JOB_STATUS_SUCCEEDED


def test_a_replica_stopped_gracefully_hands_its_job_over_at_once(fleet: Fleet) -> None:
    # A lease this long cannot expire within the test: only the hand-back lets the other replica in.
    fleet.env["TUNEFORGE_TRAIN_LEASE_TTL_S"], fleet.env["TUNEFORGE_TRAIN_HEARTBEAT_INTERVAL_S"] = "600", "1"
    job, owner, _, replicas = _run_a_job(fleet)
    survivor = next(r for name, r in replicas.items() if name != owner)
    replicas[owner].process.send_signal(signal.SIGTERM)  # what a rolling upgrade sends
    assert replicas[owner].process.wait(timeout=120) == 0, replicas[owner].output()

    stub = survivor.stub(fleet.token)
    done = wait_job(stub, job.id, timeout=300)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.message, survivor.output())
    _check_one_live_run_at_a_time(fleet, job.id, owner, survivor.name)
    logs = [e.log.message for e in stub.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id))
            if e.WhichOneof("payload") == "log"]
    assert any(m.startswith(f"replica {owner} is stopping: job re-queued") for m in logs), logs
    # A new replica (the upgraded one) starts beside the survivor and serves the same job.
    upgraded = fleet.ready(fleet.start("replica-c"))
    again = upgraded.stub(fleet.token).GetJob(tr.GetJobRequest(job_id=job.id)).job
    assert again.status == tr.JOB_STATUS_SUCCEEDED
    with pytest.raises(grpc.RpcError) as info:
        upgraded.stub(fleet.token).CreateJob(tr.CreateJobRequest(base_model=BASE, method=tr.METHOD_LORA,
                                                                 objective=tr.OBJECTIVE_SFT, dataset_version_id="x",
                                                                 priority=5000))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in info.value.details()
