"""Training use cases: create (validate, lease, queue), get/list, cancel, events, checkpoints, recovery.

Jobs run on a bounded executor (``Dependencies.executor``: at most N at a time) through
``JobRun``. The caller's identity (tenant and bearer token) is kept in memory for the run's peer
calls; a job re-queued after a restart acts through ``TenantCredentials`` instead.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tuneforge.common.auth import Identity
from tuneforge.common.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.common.logging import current_log_context, log_context
from tuneforge.training.domain import specmap
from tuneforge.training.domain.model import (
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobSpec,
    JobStatus,
    new_job_id,
)
from tuneforge.training.domain.ports import (
    CheckpointPublisher,
    DatasetAccess,
    JobRepository,
    ModelLocator,
    TenantCredentials,
    TrainingEngine,
    VersionFacts,
)
from tuneforge.training.domain.run import JobRun, RunContext, lease_holder, release_leases, status_event
from tuneforge.training.domain.validation import dataset_kind_violations, engine_violation, request_violations

log = logging.getLogger(__name__)

@dataclass
class Dependencies:
    """The ports the service is wired with (see ``app.py``)."""

    repository: JobRepository
    datasets: DatasetAccess
    models: ModelLocator
    checkpoints: CheckpointPublisher
    engine: TrainingEngine
    credentials: TenantCredentials
    executor: Executor
    store_uri: str
    work_dir: Path
    ray_address: str = ""
    peers_missing: tuple[str, ...] = field(default_factory=tuple)


def request_digest(spec: JobSpec) -> str:
    """A fingerprint of the request body (idempotency: same key with another body is a conflict)."""
    doc = json.dumps(asdict(spec), sort_keys=True, default=lambda v: getattr(v, "name", str(v)))
    return hashlib.sha256(doc.encode()).hexdigest()


class TrainingService:
    """The training use cases; every call is scoped by tenant."""

    def __init__(self, deps: Dependencies) -> None:
        self._d = deps
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ctx = RunContext(deps.repository, deps.datasets, deps.models, deps.checkpoints, deps.engine,
                               deps.store_uri, deps.work_dir, deps.ray_address, self._stopping)

    # ------------------------------------------------------------------ create

    def create(self, caller: Identity, spec: JobSpec, idempotency_key: str = "") -> Job:
        """Validate, check the base model, lease the dataset versions, store and queue the job.

        Idempotent on ``idempotency_key`` (per tenant): a repeat returns the first job.

        Raises:
            InvalidInput: every bad field at once, named as in the API.
            AlreadyExists: the key was used for a different request.
            NotFound: a base model or dataset version the caller cannot see.
            FailedPrecondition: the dataset or checkpoint service is not configured.
        """
        digest = request_digest(spec)
        if idempotency_key and (found := self._same_request(caller.tenant, idempotency_key, digest)):
            return found
        if problems := request_violations(spec):
            raise InvalidInput.of(problems, what="CreateJob request")
        if self._d.peers_missing:
            raise FailedPrecondition("the training service cannot reach its peers: set "
                                     + " and ".join(self._d.peers_missing) + " on the training service")
        resolved = specmap.with_defaults(spec)
        model_path = self._d.models.locate(caller, spec.base_model)
        job = Job(new_job_id(), caller.tenant, resolved, JobStatus.VALIDATING, datetime.now(UTC), "",
                  idempotency_key, digest)
        job.run_name = job.id
        facts = self._lease_all(caller, job)
        try:
            self._check_engine(job, model_path, facts)
            stored = self._d.repository.add(job)
        except BaseException:
            release_leases(self._d.datasets, caller, job)
            raise
        if stored.id != job.id:  # a concurrent create with the same key won
            release_leases(self._d.datasets, caller, job)
            return self._same_request(caller.tenant, idempotency_key, digest) or stored
        status_event(self._d.repository, stored)
        self._queue(stored, caller)
        return self._d.repository.get(caller.tenant, stored.id)

    def _same_request(self, tenant: str, key: str, digest: str) -> Job | None:
        found = self._d.repository.find_by_key(tenant, key)
        if found is not None and found.request_digest != digest:
            raise AlreadyExists(
                f"idempotency_key {key!r} was used for job {found.id} with a different request: send the same "
                "request to get that job back, or use a new key", reason="IDEMPOTENCY_KEY_REUSED")
        return found

    def _lease_all(self, caller: Identity, job: Job) -> dict[str, VersionFacts]:
        facts: dict[str, VersionFacts] = {}
        try:
            for version_id in job.spec.dataset_versions():
                facts[version_id] = self._d.datasets.acquire_lease(caller, version_id, lease_holder(job))
        except BaseException:
            release_leases(self._d.datasets, caller, job, only=list(facts))
            raise
        return facts

    def _check_engine(self, job: Job, model_path: Path, facts: Mapping[str, VersionFacts]) -> None:
        """Kinds against the objective, then the engine's own checks on the spec it will run."""
        problems = dataset_kind_violations(job.spec, {v: f.kind for v, f in facts.items()})
        train = facts.get(job.spec.dataset_version_id)
        if train is not None and train.split_counts and not train.split_counts.get("train"):
            problems.append(FieldViolation("dataset_version_id", f"dataset version {train.version_id!r} is split "
                                           f"but has no train rows ({dict(train.split_counts)}): curate it with a "
                                           "split that keeps train rows"))
        if problems:
            raise InvalidInput.of(problems, what="CreateJob request")
        placeholder = self._d.work_dir / job.id / "data"
        has_validation = bool(job.spec.validation_dataset_version_id) or bool(
            train is not None and train.split_counts.get("validation"))
        data = specmap.DataFiles(
            train=placeholder / "train.jsonl" if job.spec.dataset_version_id else None,
            validation=placeholder / "validation.jsonl" if has_validation else None,
            mixture=tuple((placeholder / f"mixture-{i}.jsonl", m.weight, m.task)
                          for i, m in enumerate(job.spec.mixture)))
        spec = specmap.engine_spec(job.spec, tenant=job.tenant, model_path=model_path, data=data,
                                   output=self._ctx.output(job), ray_address=self._d.ray_address)
        try:
            self._d.engine.check(spec)
        except InvalidInput as exc:
            raise InvalidInput.of([engine_violation(v.field, v.description) for v in exc.violations],
                                  what="CreateJob request") from None
        job.resolved = spec

    # ------------------------------------------------------------------ run

    def _queue(self, job: Job, caller: Identity) -> None:
        """Move VALIDATING -> QUEUED (if needed) and hand the job to the bounded executor."""
        if job.status is JobStatus.VALIDATING:
            job.move_to(JobStatus.QUEUED)
            self._d.repository.save(job, expected=(JobStatus.VALIDATING,))
            status_event(self._d.repository, job)
        run = JobRun(self._ctx, job.tenant, job.id, caller)
        with self._lock:
            self._runs[job.id] = run
        # The run's log lines carry the trace id of the call that queued it (a re-queue at start-up: its own).
        trace_id = current_log_context().get("trace_id") or uuid.uuid4().hex
        self._d.executor.submit(self._run_guarded, run, trace_id)

    def _run_guarded(self, run: JobRun, trace_id: str = "") -> None:
        try:
            with log_context(tenant=run.tenant, job_id=run.job_id, trace_id=trace_id):
                run.execute()
        except Exception:  # execute records failures itself; this guards the executor thread
            log.exception("job %s: unexpected error outside the run", run.job_id)
        finally:
            with self._lock:
                self._runs.pop(run.job_id, None)

    def recover(self) -> builtins.list[Job]:
        """At start-up: re-queue jobs an earlier process left QUEUED or RUNNING (they resume from their
        latest complete checkpoint: same run name); fail those it left VALIDATING. Returns the re-queued."""
        requeued = []
        for job in self._d.repository.unfinished():
            caller = self._d.credentials.identity_for(job.tenant)
            if caller is None:
                self._ctx.fail(job, "FAILED_PRECONDITION", f"no token of tenant {job.tenant!r} is configured to "
                               "resume this job after a restart: add one to TUNEFORGE_AUTH_TOKENS", None)
                continue
            if job.status is JobStatus.VALIDATING:
                self._ctx.fail(job, "ABORTED", "the service stopped while the job was being validated: create it "
                               "again", caller)
                continue
            if job.status is JobStatus.RUNNING:
                job.move_to(JobStatus.QUEUED)
                if not self._d.repository.save(job, expected=(JobStatus.RUNNING,)):
                    continue
                self._ctx.log(job, "WARNING", "the training service restarted: job re-queued; it resumes from its "
                              "latest complete checkpoint")
                status_event(self._d.repository, job)
            self._queue(job, caller)
            requeued.append(job)
        return requeued

    def shutdown(self) -> None:
        """Stop the runs of this process after their current step and leave their jobs to the next
        process (they stay QUEUED and resume from their latest checkpoint)."""
        self._stopping.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.interrupt()

    # ------------------------------------------------------------------ read / cancel

    def get(self, tenant: str, job_id: str) -> Job:
        """One job of the tenant (``NotFound`` for another tenant's)."""
        return self._d.repository.get(tenant, job_id)

    def list(self, tenant: str, filters: JobFilter, *, limit: int, offset: int) -> builtins.list[Job]:
        """The tenant's jobs, newest first."""
        return self._d.repository.list(tenant, filters, limit=limit, offset=offset)

    def cancel(self, tenant: str, job_id: str) -> Job:
        """Cancel a queued or running job; a finished one is returned unchanged.

        A running job stops after its current optimizer step and ends CANCELLED (its run records it);
        a queued one is cancelled here, by a compare-and-set a starting run cannot overwrite.
        """
        job = self.get(tenant, job_id)
        if job.status.terminal:
            return job
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run.cancel()
        if run is None or job.status is not JobStatus.RUNNING:
            self._ctx.cancel_idle(job, self._d.credentials.identity_for(tenant) if run is None else run.caller)
        return self.get(tenant, job_id)

    def events_after(self, tenant: str, job_id: str, sequence: int) -> builtins.list[JobEvent]:
        """The job's events after ``sequence`` (``NotFound`` for another tenant's job)."""
        self.get(tenant, job_id)
        return self._d.repository.events_after(tenant, job_id, sequence)

    def checkpoints(self, tenant: str, job_id: str) -> builtins.list[JobCheckpoint]:
        """The checkpoints the job registered, by step."""
        self.get(tenant, job_id)
        return self._d.repository.checkpoints(tenant, job_id)

