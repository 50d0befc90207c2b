"""Training use cases: create (validate, lease, queue), get/list, cancel, events, checkpoints, recovery.

Jobs run on a bounded executor (``Dependencies.executor``: at most N at a time) through
``JobRun``. The caller's identity (tenant and bearer token) is kept in memory for the run's peer
calls; a job re-queued after a restart acts through ``TenantCredentials`` instead.
"""

from __future__ import annotations

import builtins
import copy
import logging
import re
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneforge.common.auth import Identity
from tuneforge.common.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.common.logging import current_log_context, log_context
from tuneforge.common.storage import tenant_prefix
from tuneforge.engine.spec import ONLINE_RL_OBJECTIVES, PREFERENCE_OBJECTIVES, TrainingSpec, load_spec
from tuneforge.training.domain.limits import JobLimits, limit_violations
from tuneforge.training.domain.model import (
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobRequest,
    JobStatus,
    dataset_versions,
    new_job_id,
)
from tuneforge.training.domain.ports import (
    CheckpointPublisher,
    DatasetAccess,
    JobRepository,
    ModelLocator,
    StoreRef,
    TenantCredentials,
    TrainingEngine,
    VersionFacts,
)
from tuneforge.training.domain.run import JobRun, RunContext, lease_holder, release_leases, status_event

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
    limits: JobLimits = field(default_factory=JobLimits)


def checkpoint_prefix(tenant: str) -> str:
    """Where a tenant's checkpoints go inside the store."""
    return f"{tenant_prefix(tenant)}checkpoints/"


_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def _metadata_violations(request: JobRequest) -> list[FieldViolation]:
    """The job's own description (not its training): suffix and labels."""
    out = []
    if len(request.suffix) > 64:
        out.append(FieldViolation("suffix", f"is {len(request.suffix)} characters long: use at most 64"))
    for key, value in request.labels.items():
        if not _LABEL_KEY.match(key):
            out.append(FieldViolation(f"labels[{key[:40]}]", "label keys are 1-63 lowercase letters, digits, "
                                                               "'.', '_', '-'"))
        elif len(value) > 256:
            out.append(FieldViolation(f"labels[{key}]", "label values are at most 256 characters"))
    return out


def _version_sources(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The data section's sources that name a dataset version (train, validation, mixture components)."""
    found = [data.get("train"), data.get("validation"), *(m.get("source") for m in data.get("mixture") or ())]
    return [s for s in found if isinstance(s, dict) and s.get("dataset_version")]


def _online_rl(doc: Mapping[str, Any]) -> bool:
    """Whether a request's spec mapping asks for online RL (no validation loss: none is defaulted in)."""
    objective = doc.get("objective")
    return isinstance(objective, Mapping) and objective.get("kind") in {k.value for k in ONLINE_RL_OBJECTIVES}


def _kind_violations(spec: TrainingSpec, kinds: Mapping[str, str]) -> list[FieldViolation]:
    """The objective against the record kind of each leased version (``kinds``: version id -> kind name).

    DPO, ORPO and SimPO need preference pairs; SFT and pre-training cannot use them. Versions of unknown kind are not judged.
    """
    data = spec.data
    sources = [("data.train", data.train), ("data.validation", data.validation),
               *((f"data.mixture[{i}].source", m.source) for i, m in enumerate(data.mixture))]
    fields: dict[str, str] = {}
    for path, source in sources:
        if source is not None and source.dataset_version:
            fields.setdefault(source.dataset_version, f"{path}.dataset_version")
    out = []
    for version_id, field_path in fields.items():
        kind = kinds.get(version_id, "")
        if not kind:
            continue
        paired = spec.objective.kind in PREFERENCE_OBJECTIVES
        online = spec.objective.kind in ONLINE_RL_OBJECTIVES
        if online != (kind == "PROMPT"):
            out.append(FieldViolation(field_path, f"dataset version {version_id!r} holds {kind.lower()} records, but "
                                      f"{spec.objective.kind.name} needs prompt-only records (prompt, optional answer)"
                                      if online else f"dataset version {version_id!r} holds prompt-only records: "
                                      "train them with GRPO or RLOO, or use a dataset with completions"))
        elif paired and kind != "PREFERENCE":
            out.append(FieldViolation(field_path, f"dataset version {version_id!r} holds {kind.lower()} records, "
                                      f"but {spec.objective.kind.name} needs preference pairs (prompt, chosen, "
                                      "rejected): use a preference dataset or supervised fine-tuning"))
        elif not paired and kind == "PREFERENCE":
            out.append(FieldViolation(field_path, f"dataset version {version_id!r} holds preference pairs: train "
                                      "them with DPO, ORPO or SimPO, or use a chat/text dataset"))
    return out


class TrainingService:
    """The training use cases; every call is scoped by tenant."""

    def __init__(self, deps: Dependencies) -> None:
        self._d = deps
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ctx = RunContext(deps.repository, deps.datasets, deps.models, deps.checkpoints, deps.engine,
                               deps.ray_address, self._stopping)

    # ------------------------------------------------------------------ create

    def create(self, caller: Identity, request: JobRequest, idempotency_key: str = "") -> Job:
        """Validate, check the base model, lease the dataset versions, store and queue the job.

        Idempotent on ``idempotency_key`` (per tenant): a repeat returns the first job.

        Raises:
            InvalidInput: every bad field at once, named as in the training spec.
            AlreadyExists: the key was used for a different request.
            NotFound: a base model or dataset version the caller cannot see.
            FailedPrecondition: the dataset or checkpoint service is not configured.
        """
        digest = request.digest()
        if idempotency_key and (found := self._same_request(caller.tenant, idempotency_key, digest)):
            return found
        job_id = new_job_id()
        problems = [*request.problems, *_metadata_violations(request)]
        try:
            spec = self._spec(request, caller.tenant, job_id)
        except InvalidInput as exc:
            problems += [v for v in exc.violations if v not in problems]
        if problems:
            raise InvalidInput.of(problems, what="CreateJob request")
        if self._d.peers_missing:
            raise FailedPrecondition("the training service cannot reach its peers: set "
                                     + " and ".join(self._d.peers_missing) + " on the training service")
        model = self._d.models.reference(caller, spec.model.name or "")  # unknown models fail here
        if model is None:  # a checkpoint: checked now, made local by the run
            self._d.models.locate(caller, spec.model.name or "")
        if spec.objective.rl.reward_model:  # unknown reward models fail here, not in the run
            self._d.models.locate(caller, spec.objective.rl.reward_model)
        job = Job(job_id, caller.tenant, spec, JobStatus.VALIDATING, datetime.now(UTC), job_id, request.suffix,
                  dict(request.labels), idempotency_key, digest)
        facts = self._lease_all(caller, job)
        try:
            job.spec = self._check_inputs(request, job, facts, model)
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

    def _spec(self, request: JobRequest, tenant: str, run_name: str,
              facts: Mapping[str, VersionFacts] | None = None, model: StoreRef | None = None) -> TrainingSpec:
        """The request plus what the service owns (tenant, output, validation default and, once the
        versions are leased, where workers read them), validated by the engine's own ``load_spec``.

        A validation version without a named split reads its validation split; a job without
        validation data evaluates on its training version's validation split when it has one.
        """
        doc = copy.deepcopy(dict(request.spec))
        doc["tenant"] = tenant
        doc["output"] = {"checkpoint_uri": self._d.store_uri, "checkpoint_prefix": checkpoint_prefix(tenant),
                         "run_name": run_name}
        data = doc.setdefault("data", {})
        train = (data.get("train") or {}).get("dataset_version") if isinstance(data.get("train"), dict) else None
        if isinstance(data.get("validation"), dict):
            data["validation"].setdefault("split", "validation")
        elif train and not _online_rl(doc) and (facts is None or facts[train].split_counts.get("validation")):
            data["validation"] = {"dataset_version": train, "split": "validation"}
        if facts is not None:
            for source in _version_sources(data):
                self._pin(source, facts[source["dataset_version"]])
        if model is not None:
            doc["model"] = {**doc.get("model", {}), **asdict(model)}
        spec = load_spec(doc)
        if problems := limit_violations(spec, self._d.limits):
            raise InvalidInput.of(problems, what="CreateJob request")
        return spec

    def _pin(self, source: dict[str, Any], facts: VersionFacts) -> None:
        """Point a source at its version in the shared store; a version without the split reads every row."""
        split = source.get("split", "train")
        ref = self._d.datasets.reference(facts)
        source.update(split=split if facts.split_counts.get(split) else None, store_uri=ref.store_uri,
                      manifest_key=ref.manifest_key, manifest_sha256=ref.manifest_sha256)

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
            for version_id in dataset_versions(job.spec):
                facts[version_id] = self._d.datasets.acquire_lease(caller, version_id, lease_holder(job))
        except BaseException:
            release_leases(self._d.datasets, caller, job, only=list(facts))
            raise
        return facts

    def _check_inputs(self, request: JobRequest, job: Job, facts: Mapping[str, VersionFacts],
                      model: StoreRef | None) -> TrainingSpec:
        """The leased versions against the spec; returns the spec with every input pinned in the store."""
        spec = job.spec
        problems = _kind_violations(spec, {v: f.kind for v, f in facts.items()})
        train = facts.get(spec.data.train.dataset_version or "") if spec.data.train else None
        if train is not None and train.split_counts and not train.split_counts.get("train"):
            problems.append(FieldViolation("data.train.dataset_version", f"dataset version {train.version_id!r} "
                                           f"is split but has no train rows ({dict(train.split_counts)}): curate "
                                           "it with a split that keeps train rows"))
        if problems:
            raise InvalidInput.of(problems, what="CreateJob request")
        return self._spec(request, job.tenant, job.run_name, facts, model)

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

