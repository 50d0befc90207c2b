"""A run that cannot reach its Ray cluster, or loses the connection to it, is not the job's fault:
the job goes back to the queue and runs again (resuming from its latest checkpoint), up to
``resources.max_failures`` times, and only then fails UNAVAILABLE with the cause.

The service is the real one (CreateJob's validation, the dispatcher's claims and leases, events) on an
embedded SQLite database; the engine is the one stand-in, failing the way ``run_on_ray`` reports a
lost Ray connection (``Unavailable``, reason ``RAY_UNREACHABLE``) on the runs the test chooses.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.training.test_quotas import Peers
from tuneforge.common import db
from tuneforge.common.auth import Identity
from tuneforge.common.errors import Unavailable
from tuneforge.common.ray_connection import RAY_UNREACHABLE
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.app import MIGRATIONS_DIR, VERSION_TABLE
from tuneforge.training.domain import run as run_module
from tuneforge.training.domain.dispatcher import DispatchSettings
from tuneforge.training.domain.model import EventKind, JobRequest, JobStatus
from tuneforge.training.domain.ports import Outcome, Progress
from tuneforge.training.domain.service import Dependencies, TrainingService

pytestmark = pytest.mark.integration

CALLER = Identity("acme", "u", "tok")


class FlakyRayEngine:
    """Loses the Ray connection on its first ``drops`` runs (after a step and a checkpoint), then trains."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.runs = 0
        self.lock = threading.Lock()

    def run(self, spec, on_progress, cancel) -> Outcome:
        with self.lock:
            self.runs += 1
            attempt = self.runs
        on_progress(Progress("started", 0, {"total_steps": 2}))
        if attempt > 1:
            on_progress(Progress("resumed", 1, {}, uri=f"file:///store/{spec.output.run_name}/step-1"))
        on_progress(Progress("step", 1, {"loss": 1.0}))
        if attempt <= self.drops:
            raise Unavailable(f"lost the connection to the Ray cluster at ray://head:10001 during the run "
                              f"(ConnectionAbortedError: drop {attempt}): run the job again to resume it",
                              reason=RAY_UNREACHABLE)
        on_progress(Progress("step", 2, {"loss": 0.5}))
        return Outcome("completed", 2, {"loss": 0.5}, last_checkpoint_uri=f"file:///store/{spec.output.run_name}/step-2")


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "RAY_RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def service_for(tmp_path: Path):
    made: list[tuple[TrainingService, ThreadPoolExecutor]] = []
    engine_db = db.create_db_engine(f"sqlite:///{tmp_path / 'training.db'}")
    db.run_migrations(engine_db, MIGRATIONS_DIR, VERSION_TABLE)
    repo = SqlJobRepository(db.make_sessionmaker(engine_db))

    def make(engine: FlakyRayEngine) -> tuple[TrainingService, SqlJobRepository]:
        peers = Peers()
        executor = ThreadPoolExecutor(2)
        deps = Dependencies(repository=repo, datasets=peers, models=peers, checkpoints=peers, engine=engine,
                            credentials=peers, executor=executor, store_uri="file:///store", work_dir=tmp_path,
                            dispatch=DispatchSettings("replica-0", 1, 30.0, 5.0, 0.05))
        service = TrainingService(deps)
        service.start()
        made.append((service, executor))
        return service, repo

    yield make
    for service, executor in made:
        service.shutdown()
        executor.shutdown(wait=True)
        service.close()
    engine_db.dispose()


def _request(max_failures: int) -> JobRequest:
    return JobRequest({"model": {"name": "tiny-base"}, "data": {"train": {"dataset_version": "dsv_1"}},
                       "hyperparameters": {"max_steps": 2}, "resources": {"max_failures": max_failures}})


def _wait_terminal(service: TrainingService, job_id: str, timeout: float = 120.0):
    """The job once it ended and its final status event is written (the event follows the row)."""
    deadline = time.monotonic() + timeout
    while True:
        job = service.get(CALLER.tenant, job_id)
        statuses = [e.data["status"] for e in service.events_after(CALLER.tenant, job_id, 0)
                    if e.kind is EventKind.STATUS]
        if job.status.terminal and statuses[-1:] == [job.status.name]:
            return job
        assert time.monotonic() < deadline, f"job still {job.status.name}, status events {statuses}"
        time.sleep(0.02)


def _statuses_and_logs(repo: SqlJobRepository, job_id: str) -> tuple[list[str], list[str]]:
    events = repo.events_after(CALLER.tenant, job_id, 0)
    return ([e.data["status"] for e in events if e.kind is EventKind.STATUS],
            [e.data["message"] for e in events if e.kind is EventKind.LOG])


def test_a_lost_ray_connection_requeues_the_job_which_then_succeeds(service_for) -> None:
    engine = FlakyRayEngine(drops=2)
    service, repo = service_for(engine)
    job = _wait_terminal(service, service.create(CALLER, _request(max_failures=3)).id)
    statuses, logs = _statuses_and_logs(repo, job.id)
    assert job.status is JobStatus.SUCCEEDED and job.error is None, (job.error, logs)
    assert engine.runs == 3 and job.restarts == 2
    assert statuses[-6:] == ["RUNNING", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"], statuses
    requeued = [m for m in logs if "the job is re-queued in" in m]
    assert len(requeued) == 2, logs
    assert "lost the connection to the Ray cluster" in requeued[0] and "restart 1 of at most 3" in requeued[0]
    assert "restart 2 of at most 3" in requeued[1] and "resumes from its latest complete checkpoint" in requeued[1]


def test_the_job_fails_unavailable_once_its_restarts_are_spent(service_for) -> None:
    engine = FlakyRayEngine(drops=10)
    service, repo = service_for(engine)
    job = _wait_terminal(service, service.create(CALLER, _request(max_failures=1)).id)
    statuses, logs = _statuses_and_logs(repo, job.id)
    assert job.status is JobStatus.FAILED, logs
    assert engine.runs == 2 and job.restarts == 1  # the first run and one more: max_failures=1
    assert job.error is not None and job.error.code == "UNAVAILABLE", job.error
    assert "lost the connection to the Ray cluster" in job.error.message
    assert statuses.count("QUEUED") == 2  # queued at create, and once after the first drop


def test_no_restarts_allowed_fails_at_the_first_drop(service_for) -> None:
    engine = FlakyRayEngine(drops=1)
    service, _ = service_for(engine)
    job = _wait_terminal(service, service.create(CALLER, _request(max_failures=0)).id)
    assert job.status is JobStatus.FAILED and engine.runs == 1 and job.restarts == 0


def test_a_cancel_during_the_backoff_ends_the_job_cancelled_without_another_run(service_for, monkeypatch) -> None:
    monkeypatch.setattr(run_module, "RAY_RETRY_BACKOFF_S", 3600.0)  # capped at 300 s: the run waits, holding its lease
    engine = FlakyRayEngine(drops=5)
    service, repo = service_for(engine)
    job_id = service.create(CALLER, _request(max_failures=3)).id
    deadline = time.monotonic() + 120
    while not any("the job is re-queued in 300 s" in m for m in _statuses_and_logs(repo, job_id)[1]):
        assert time.monotonic() < deadline, "the run never reached its backoff"
        time.sleep(0.02)
    service.cancel(CALLER.tenant, job_id)
    job = _wait_terminal(service, job_id)
    assert job.status is JobStatus.CANCELLED and engine.runs == 1 and job.restarts == 0
