"""Quotas, fair share and lease loss through the real dispatcher: two replicas (two ``TrainingService``s,
each with its own dispatcher, heartbeat and executor) on one real PostgreSQL.

The engine is the one stand-in: each job "trains" until the test lets it finish, so the test decides
when slots free up and can look at what runs at every moment. Everything else (CreateJob's
validation, the SQL claims under the advisory lock, leases, heartbeats, events) is the service's own.
The dataset/model/checkpoint peers answer from memory (their real gRPC forms are covered elsewhere).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tuneforge.common import db
from tuneforge.common.auth import Identity
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.app import MIGRATIONS_DIR, VERSION_TABLE
from tuneforge.training.domain.dispatch import parse_quotas
from tuneforge.training.domain.dispatcher import DispatchSettings
from tuneforge.training.domain.model import EventKind, JobCheckpoint, JobRequest, JobStatus
from tuneforge.training.domain.ports import Outcome, Progress, StoreRef, VersionFacts
from tuneforge.training.domain.service import Dependencies, TrainingService

pytestmark = pytest.mark.integration

TENANTS = ("t1", "t2", "t3")
QUOTA, CAP = 2, 5  # per tenant, all replicas together


class Peers:
    """The dataset, model, checkpoint and credential ports, answered from memory."""

    def acquire_lease(self, caller, version_id, holder):
        return VersionFacts(version_id, "CHAT", {"train": 10})

    def release_lease(self, caller, version_id, holder):
        return None

    def reference(self, *args):
        return StoreRef("file:///store", "tenants/x/MANIFEST.json", "0" * 64)

    def locate(self, caller, base_model):
        raise AssertionError("registered models are references, never made local")

    def config(self, caller, base_model):
        return None  # an unknown architecture: admitted without a memory plan

    def publish(self, caller, job, uri, step, metrics, dataset_version_id):
        return JobCheckpoint(f"ckpt_{job.id}", step, dict(metrics), datetime.now(UTC), uri)

    def identity_for(self, tenant):
        return Identity(tenant, "svc", "token")


class GatedEngine:
    """Trains until released (or cancelled); records what runs at every moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, str] = {}  # run name (job id) -> tenant
        self.started: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.worst: Counter[str] = Counter()  # most jobs of each tenant seen running at once
        self.most = 0

    def run(self, spec, on_progress, cancel) -> Outcome:
        name, tenant = spec.output.run_name, spec.tenant
        with self.lock:
            self.running[name] = tenant
            self.started.append(tenant)
            gate = self.gates.setdefault(name, threading.Event())
            counts = Counter(self.running.values())
            for t, n in counts.items():
                self.worst[t] = max(self.worst[t], n)
            self.most = max(self.most, len(self.running))
        try:
            on_progress(Progress("started", 0, {"total_steps": 1}))
            while not (gate.wait(0.05) or cancel.is_set()):
                pass
            on_progress(Progress("step", 1, {"loss": 1.0}))
            return Outcome("cancelled" if cancel.is_set() else "completed", 1, {"loss": 1.0},
                           last_checkpoint_uri=f"file:///store/{name}/step-1")
        finally:
            with self.lock:
                del self.running[name]

    def finish_oldest(self) -> str:
        with self.lock:
            name = next(iter(self.running))
            self.gates.setdefault(name, threading.Event()).set()
        return name

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.running)


def _replica(name: str, repo: SqlJobRepository, engine: GatedEngine, tmp_path: Path,
             dispatch: DispatchSettings | None = None) -> TrainingService:
    peers = Peers()
    quotas = parse_quotas(f'{{"*": {{"max_running_jobs": {QUOTA}}}}}', CAP)
    deps = Dependencies(repository=repo, datasets=peers, models=peers, checkpoints=peers, engine=engine,
                        credentials=peers, executor=ThreadPoolExecutor(3), store_uri="file:///store",
                        work_dir=tmp_path, dispatch=dispatch or DispatchSettings(name, 3, 6.0, 0.5, 0.05, quotas),
                        single_replica=False)
    service = TrainingService(deps)
    service.start()
    return service


def _wait(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _request(i: int) -> JobRequest:
    return JobRequest({"model": {"name": "tiny-base"}, "data": {"train": {"dataset_version": f"dsv_{i}"}},
                       "hyperparameters": {"max_steps": 1}}, priority=i % 3)


def test_three_tenants_ten_jobs_each_share_two_replicas_within_their_quotas(postgres_url: str, tmp_path: Path) -> None:
    engine_db = db.create_db_engine(postgres_url)
    db.run_migrations(engine_db, MIGRATIONS_DIR, VERSION_TABLE)
    repo = SqlJobRepository(db.make_sessionmaker(engine_db))
    engine = GatedEngine()
    replicas = [_replica(f"replica-{n}", repo, engine, tmp_path) for n in range(2)]
    try:
        # Tenant t1 floods the queue first; t2 and t3 come later. Creates alternate between replicas.
        jobs = {t: [replicas[(i + n) % 2].create(Identity(t, "u", "tok"), _request(i)).id for i in range(10)]
                for n, t in enumerate(TENANTS)}
        owner = {job_id: t for t, ids in jobs.items() for job_id in ids}
        finished = 0
        while finished < 30:
            left = {t: sum(1 for j in jobs[t] if not _status(repo, t, j).terminal) for t in TENANTS}
            can_run = min(CAP, sum(min(QUOTA, n) for n in left.values()))  # what the quotas allow now
            _wait(lambda n=can_run: len(engine.snapshot()) == n, f"{can_run} running jobs")
            running = Counter(engine.snapshot().values())
            stored = Counter(owner[j.id] for t in TENANTS for j in repo.list(t, _running(), limit=50, offset=0))
            assert stored == running  # the database agrees with what trains
            assert max(running.values()) <= QUOTA
            queued = {t for t in TENANTS if sum(1 for j in jobs[t] if _status(repo, t, j) is JobStatus.QUEUED)}
            if len(queued) == 3:  # every tenant waits: each gets its fair part of the 5 slots (2, 2, 1)
                assert sorted(running.values()) == [1, 2, 2], running
            engine.finish_oldest()
            finished += 1
            _wait(lambda f=finished: _ended(repo, jobs) >= f, f"{finished} jobs ended")
        assert all(_status(repo, t, j) is JobStatus.SUCCEEDED for t in TENANTS for j in jobs[t])
        assert engine.most == CAP and max(engine.worst.values()) == QUOTA
        # Fairness is visible from the start: t1 queued all its jobs first, yet the first five starts
        # hold every tenant, and no tenant got a third before the others had two.
        assert set(engine.started[:5]) == set(TENANTS) and Counter(engine.started[:5])["t1"] == 2
        # A job that waited says why in its log, once per change of reason (never per poll).
        waited = [e.data["message"] for t in TENANTS for j in jobs[t] for e in repo.events_after(t, j, 0)
                  if e.kind is EventKind.LOG and e.data["message"].startswith("waiting for")]
        assert any("tenant quota" in m and "TUNEFORGE_TRAIN_TENANT_QUOTAS" in m for m in waited)
        for t in TENANTS:
            for j in jobs[t]:
                reasons = [e.data["message"] for e in repo.events_after(t, j, 0)
                           if e.kind is EventKind.LOG and e.data["message"].startswith("waiting for")]
                assert all(a != b for a, b in itertools.pairwise(reasons)), reasons
        # Both replicas trained: the work was shared.
        owners = {e.data["message"].split()[1] for t in TENANTS for j in jobs[t] for e in repo.events_after(t, j, 0)
                  if e.kind is EventKind.LOG and e.data["message"].startswith("replica ")}
        assert owners == {"replica-0", "replica-1"}
    finally:
        for service in replicas:
            service.shutdown()
        for service in replicas:
            service._d.executor.shutdown(wait=True)
            service.close()
        engine_db.dispose()


def _running():
    from tuneforge.training.domain.model import JobFilter
    return JobFilter(statuses=frozenset({JobStatus.RUNNING}))


def _status(repo: SqlJobRepository, tenant: str, job_id: str) -> JobStatus:
    return repo.get(tenant, job_id).status


def _ended(repo: SqlJobRepository, jobs: dict[str, list[str]]) -> int:
    return sum(1 for t, ids in jobs.items() for j in ids if _status(repo, t, j).terminal)


def test_a_replica_that_lost_its_lease_stops_its_run_and_writes_nothing_more(postgres_url: str, tmp_path: Path) -> None:
    """A stalled replica (say a long GC pause or a network partition) whose lease expired while its run
    still trains: the other replica claims the job; the stale run's next write is refused by the fence
    and its next heartbeat stops it. The job ends once, from the new run."""
    engine_db = db.create_db_engine(postgres_url)
    db.run_migrations(engine_db, MIGRATIONS_DIR, VERSION_TABLE)
    repo = SqlJobRepository(db.make_sessionmaker(engine_db))
    # Heartbeats and polls far apart: the test drives them (dispatch_once, heartbeat_once).
    engines = {name: GatedEngine() for name in ("stale", "fresh")}
    replicas = {name: _replica(name, repo, engines[name], tmp_path, DispatchSettings(name, 1, 600, 200, 300))
                for name in engines}
    try:
        job = replicas["stale"].create(Identity("t1", "u", "tok"), _request(1))
        _wait(lambda: engines["stale"].snapshot(), "the first run")
        assert repo.expire_leases() == 1  # the stale replica missed its heartbeats
        assert replicas["fresh"].dispatcher.dispatch_once() == 1
        _wait(lambda: engines["fresh"].snapshot(), "the second run")
        assert engines["stale"].snapshot()  # two engines train the job for a moment; only one may write
        engines["stale"].finish_oldest()  # the stale run reports its step: refused, the run stops silently
        _wait(lambda: not engines["stale"].snapshot(), "the stale run to stop")
        replicas["stale"].dispatcher.heartbeat_once()  # finds the lease gone (the run is already leaving)
        assert repo.get("t1", job.id).status is JobStatus.RUNNING and repo.get("t1", job.id).lease.owner == "fresh"
        engines["fresh"].finish_oldest()
        _wait(lambda: repo.get("t1", job.id).status.terminal, "the job to end")
        assert repo.get("t1", job.id).status is JobStatus.SUCCEEDED
        written = [(e.kind, e.data) for e in repo.events_after("t1", job.id, 0)]
        steps = [d for k, d in written if k is EventKind.METRICS]
        assert len(steps) == 1  # the fresh run's step only
        statuses = [d["status"] for k, d in written if k is EventKind.STATUS]
        assert statuses == ["VALIDATING", "QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]
    finally:
        for service in replicas.values():
            service.shutdown()
        for service in replicas.values():
            service._d.executor.shutdown(wait=True)
            service.close()
        engine_db.dispose()


def test_a_run_whose_lease_is_taken_is_stopped_by_the_heartbeat(postgres_url: str, tmp_path: Path) -> None:
    """The heartbeat alone stops a run whose lease another replica took, before the run writes anything."""
    engine_db = db.create_db_engine(postgres_url)
    db.run_migrations(engine_db, MIGRATIONS_DIR, VERSION_TABLE)
    repo = SqlJobRepository(db.make_sessionmaker(engine_db))
    engines = {name: GatedEngine() for name in ("stale", "fresh")}
    replicas = {name: _replica(name, repo, engines[name], tmp_path, DispatchSettings(name, 1, 600, 200, 300))
                for name in engines}
    try:
        job = replicas["stale"].create(Identity("t1", "u", "tok"), _request(1))
        _wait(lambda: engines["stale"].snapshot(), "the first run")
        repo.expire_leases()
        assert replicas["fresh"].dispatcher.dispatch_once() == 1
        replicas["stale"].dispatcher.heartbeat_once()  # lease gone: the run is cancelled at once
        _wait(lambda: not engines["stale"].snapshot(), "the stale run to stop")
        _wait(lambda: engines["fresh"].snapshot(), "the second run")
        engines["fresh"].finish_oldest()
        _wait(lambda: repo.get("t1", job.id).status.terminal, "the job to end")
        assert repo.get("t1", job.id).status is JobStatus.SUCCEEDED
    finally:
        for service in replicas.values():
            service.shutdown()
        for service in replicas.values():
            service._d.executor.shutdown(wait=True)
            service.close()
        engine_db.dispose()
