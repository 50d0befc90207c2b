"""Training use cases: create (validate, lease, queue), get/list, cancel, events, checkpoints, recovery.

Jobs wait QUEUED in the database; every replica's ``Dispatcher`` claims them under leases (quotas,
fair share, priority) and runs them on a bounded executor (``Dependencies.executor``) through
``JobRun``. A job created on this replica and claimed here acts with its caller's identity (tenant
and bearer token, kept in memory); a job claimed elsewhere or after a restart acts through
``TenantCredentials`` instead.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import re
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneforge.common import tracing
from tuneforge.common.auth import Identity
from tuneforge.common.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.common.storage import tenant_prefix
from tuneforge.engine.spec import (
    LABELLED_OBJECTIVES,
    ONLINE_RL_OBJECTIVES,
    PREFERENCE_OBJECTIVES,
    ObjectiveKind,
    TrainingSpec,
    load_spec,
)
from tuneforge.training.domain.admission import (
    Assessment,
    ClusterCapacity,
    JobPlan,
    assess,
    planned_steps_and_tokens,
)
from tuneforge.training.domain.dispatch import PRIORITY_MAX, PRIORITY_MIN
from tuneforge.training.domain.dispatcher import Dispatcher, DispatchSettings
from tuneforge.training.domain.files import JobFiles, metrics_key
from tuneforge.training.domain.integrations import IntegrationSecrets, integration_violations
from tuneforge.training.domain.limits import JobLimits, limit_violations
from tuneforge.training.domain.model import (
    EventKind,
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

# Earlier jobs whose measured throughput an estimate uses (the latest ones).
THROUGHPUT_JOBS = 5

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
    capacity: ClusterCapacity = field(default_factory=ClusterCapacity)
    # Spec field path -> the API's name for it (errors and plans speak the caller's language).
    field_name: Callable[[str], str] = field(default=lambda path: path)
    dispatch: DispatchSettings = field(default_factory=lambda: DispatchSettings("replica"))
    # One replica on an embedded database (SQLite): at start-up every lease left is a dead process's.
    single_replica: bool = True
    files: JobFiles | None = None  # the jobs' metrics files (none: jobs keep no metrics file)
    integrations: IntegrationSecrets | None = None  # none: jobs cannot name integrations


# A VALIDATING job this old was left by a replica that died during CreateJob (which takes seconds).
_ABANDONED_VALIDATION = timedelta(minutes=15)
_CALLER_KEPT_S = 3600.0


def checkpoint_prefix(tenant: str) -> str:
    """Where a tenant's checkpoints go inside the store."""
    return f"{tenant_prefix(tenant)}checkpoints/"


_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def _metadata_violations(request: JobRequest) -> list[FieldViolation]:
    """The job's own description (not its training): suffix and labels."""
    out = []
    if not PRIORITY_MIN <= request.priority <= PRIORITY_MAX:
        out.append(FieldViolation("priority", f"is {request.priority}: use {PRIORITY_MIN}..{PRIORITY_MAX} (higher "
                                  "runs first among your queued jobs; default 0)"))
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
        labelled = spec.objective.kind in LABELLED_OBJECTIVES
        online = spec.objective.kind in ONLINE_RL_OBJECTIVES
        if labelled != (kind == "LABELLED"):
            out.append(_labelled_violation(spec, version_id, kind, field_path))
        elif labelled:
            continue
        elif online != (kind == "PROMPT"):
            out.append(FieldViolation(field_path, f"dataset version {version_id!r} holds {kind.lower()} records, but "
                                      f"{spec.objective.kind.name} needs prompt-only records (prompt, optional answer)"
                                      if online else f"dataset version {version_id!r} holds prompt-only records: "
                                      "train them with GRPO, RLOO or PPO, or use a dataset with completions"))
        elif paired and kind != "PREFERENCE":
            out.append(FieldViolation(field_path, f"dataset version {version_id!r} holds {kind.lower()} records, "
                                      f"but {spec.objective.kind.name} needs preference pairs (prompt, chosen, "
                                      "rejected): use a preference dataset or supervised fine-tuning"))
        elif not paired and kind == "PREFERENCE":
            out.append(FieldViolation(field_path, f"dataset version {version_id!r} holds preference pairs: train "
                                      "them with DPO, ORPO, SimPO or a reward model, or use a chat/text dataset"))
    return out


def _head_violation(spec: TrainingSpec, folder: Path) -> FieldViolation | None:
    """A reward model (a sequence classifier) cannot be the base of a language-model objective: it has
    no LM head to fine-tune or generate with (a reward model may start from one, or from a causal LM)."""
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or ()
    except (OSError, ValueError):
        return None  # the engine reports an unreadable folder with its own message
    reward = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    if reward and spec.objective.kind is not ObjectiveKind.REWARD_MODEL:
        return FieldViolation("model.name", f"checkpoint {spec.model.name} is a reward model (a sequence "
                              f"classifier), which {spec.objective.kind.name} cannot fine-tune: name a causal "
                              "language model, or train OBJECTIVE_REWARD_MODEL from it")
    return None


def _labelled_violation(spec: TrainingSpec, version_id: str, kind: str, field_path: str) -> FieldViolation:
    """KTO needs labelled completions, and labelled completions need KTO."""
    if kind == "LABELLED":
        return FieldViolation(field_path, f"dataset version {version_id!r} holds labelled completions (prompt, "
                              "completion, label): train them with KTO, or use a dataset of the objective's kind")
    return FieldViolation(field_path, f"dataset version {version_id!r} holds {kind.lower()} records, but "
                          f"{spec.objective.kind.name} needs labelled completions (prompt, completion, label): "
                          "upload a KTO-format dataset (DATASET_FORMAT_KTO)")


class TrainingService:
    """The training use cases; every call is scoped by tenant."""

    def __init__(self, deps: Dependencies) -> None:
        self._d = deps
        # Callers of jobs created here, until this replica claims them (job id -> identity, trace id, when);
        # a job another replica claims leaves its entry behind until it is an hour old.
        self._callers: dict[str, tuple[Identity, Any, float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ctx = RunContext(deps.repository, deps.datasets, deps.models, deps.checkpoints, deps.engine,
                               deps.ray_address, self._stopping, files=deps.files)
        self._dispatcher = Dispatcher(deps.repository, deps.executor, deps.dispatch, self._launch, self._waiting)

    # ------------------------------------------------------------------ create

    def create(self, caller: Identity, request: JobRequest, idempotency_key: str = "") -> Job:
        """Validate, check the base model, lease the dataset versions, store and queue the job.

        Idempotent on ``idempotency_key`` (per tenant): a repeat returns the first job.

        Raises:
            InvalidInput: every bad field at once, named as in the training spec.
            AlreadyExists: the key was used for a different request.
            NotFound: a base model or dataset version the caller cannot see.
            FailedPrecondition: the dataset or checkpoint service is not configured; the job cannot fit
                the cluster (its devices' memory per the memory planner, or their number): the message
                and details name the need, what is usable and the fixes that would fit.
        """
        digest = request.digest()
        if idempotency_key and (found := self._same_request(caller.tenant, idempotency_key, digest)):
            return found
        job_id = new_job_id()
        problems = [*request.problems, *_metadata_violations(request)]
        try:
            spec = self._spec(request, caller.tenant, job_id)
            problems += self._integration_violations(spec)
        except InvalidInput as exc:
            problems += [v for v in exc.violations if v not in problems]
        if problems:
            raise InvalidInput.of(problems, what="CreateJob request")
        if self._d.peers_missing:
            raise FailedPrecondition("the training service cannot reach its peers: set "
                                     + " and ".join(self._d.peers_missing) + " on the training service")
        model = self._check_models(caller, spec, "CreateJob request")
        assessment = self._assess(caller, spec)
        if not assessment.fits:  # refused before anything is leased, stored or queued
            log.info("CreateJob refused: %s", "; ".join(assessment.reasons()))
            raise assessment.refusal(self._d.field_name)
        job = Job(job_id, caller.tenant, spec, JobStatus.VALIDATING, datetime.now(UTC), job_id, request.suffix,
                  dict(request.labels), idempotency_key, digest, priority=request.priority)
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
        self._ctx.log(stored, "INFO", assessment.summary())
        self._queue(stored, caller)
        return self._d.repository.get(caller.tenant, stored.id)

    def _assess(self, caller: Identity, spec: TrainingSpec) -> Assessment:
        """The job against the cluster, planned from the base model's config."""
        return assess(spec, self._d.models.config(caller, spec.model.name or ""), self._d.capacity, self._d.limits)

    # ------------------------------------------------------------------ estimate

    def _check_models(self, caller: Identity, spec: TrainingSpec, what: str) -> StoreRef | None:
        """The base model's store reference (None: a checkpoint, made local by the run); unknown base and
        reward models fail here (NOT_FOUND), as does a reward model used as a language model's base."""
        model = self._d.models.reference(caller, spec.model.name or "")
        if model is None:  # a checkpoint: checked now, made local by the run
            folder = self._d.models.locate(caller, spec.model.name or "")
            if (v := _head_violation(spec, folder)) is not None:
                raise InvalidInput.of([v], what=what)
        if spec.objective.rl.reward_model:  # unknown reward models fail here, not in the run
            self._d.models.locate_reward_model(caller, spec.objective.rl.reward_model)
        return model

    def estimate(self, caller: Identity, request: JobRequest) -> JobPlan:
        """Plan a job as CreateJob would admit it, creating, leasing and queueing nothing.

        Raises:
            The errors CreateJob raises before admission (InvalidInput, NotFound, FailedPrecondition);
            a job that does not fit is not an error here: the plan says so, with the fixes.
        """
        problems = list(request.problems)
        try:
            spec = self._spec(request, caller.tenant, "estimate")
            problems += self._integration_violations(spec)
        except InvalidInput as exc:
            problems += [v for v in exc.violations if v not in problems]
        if problems:  # every problem at once, as CreateJob reports them
            raise InvalidInput.of(problems, what="EstimateJob request")
        if self._d.peers_missing:
            raise FailedPrecondition("the training service cannot reach its peers: set "
                                     + " and ".join(self._d.peers_missing) + " on the training service")
        self._check_models(caller, spec, "EstimateJob request")
        assessment = self._assess(caller, spec)
        facts = {v: self._d.datasets.describe(caller, v) for v in dataset_versions(spec)}
        if problems := _kind_violations(spec, {v: f.kind for v, f in facts.items()}):
            raise InvalidInput.of(problems, what="EstimateJob request")
        train = spec.data.train.dataset_version if spec.data.train else None
        stats = self._d.datasets.token_stats(facts[train]) if train else {}
        steps, tokens, source = planned_steps_and_tokens(spec, facts, stats)
        rate, measured = self._measured_rate(caller.tenant, spec)
        return JobPlan(assessment, steps, tokens, source, rate, measured)

    def _measured_rate(self, tenant: str, spec: TrainingSpec) -> tuple[float, int]:
        """Median wall-clock tokens/s of the tenant's latest jobs of the same base model, method and device."""
        recent = self._d.repository.list(tenant, JobFilter(method=spec.method.kind), limit=200, offset=0)
        rates = [j.tokens_per_second for j in recent if j.tokens_per_second > 0
                 and j.spec.model.name == spec.model.name and j.spec.resources.use_gpu == spec.resources.use_gpu
                 and j.spec.precision == spec.precision][:THROUGHPUT_JOBS]
        return (statistics.median(rates), len(rates)) if rates else (0.0, 0)
    def _integration_violations(self, spec: TrainingSpec) -> list[FieldViolation]:
        if not spec.reporting.integrations:
            return []
        if self._d.integrations is None:
            return [FieldViolation("reporting.integrations", "this training service reports to no tracking tools: "
                                   "leave integrations empty")]
        return integration_violations(spec, self._d.integrations)

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
        """Move VALIDATING -> QUEUED and wake the dispatcher; the caller's identity waits for the claim."""
        job.move_to(JobStatus.QUEUED)
        # The run's span and log lines continue the trace of the call that queued it.
        trace = tracing.carry()
        now = time.monotonic()
        with self._lock:
            for job_id in [k for k, (_, _, at) in self._callers.items() if now - at > _CALLER_KEPT_S]:
                del self._callers[job_id]
            self._callers[job.id] = (caller, trace, now)
        if not self._d.repository.save(job, expected=(JobStatus.VALIDATING,)):
            with self._lock:
                self._callers.pop(job.id, None)
            return
        status_event(self._d.repository, job)
        self._dispatcher.wake()

    def _launch(self, job: Job) -> tuple[JobRun, Any] | None:
        """A run for a job this replica claimed: as its caller when it was created here, else as its tenant."""
        assert job.lease is not None
        with self._lock:
            caller, trace, _ = self._callers.pop(job.id, (None, None, 0.0))
        caller = caller or self._d.credentials.identity_for(job.tenant)
        if caller is None:
            self._ctx.fail(job, "FAILED_PRECONDITION", f"no token of tenant {job.tenant!r} is configured to run "
                           "this job on a replica other than the one it was created on (or after a restart): add "
                           "one to TUNEFORGE_AUTH_TOKENS", None)
            return None
        return JobRun(self._ctx, job.tenant, job.id, caller, job.lease), trace

    def _waiting(self, tenant: str, job_id: str, reason: str) -> None:
        """A queued job's wait reason changed: say why in its log (once per change, not per poll)."""
        self._ctx.repository.add_event(tenant, job_id, EventKind.LOG, {"level": "INFO", "message": reason})

    def start(self) -> builtins.list[Job]:
        """Recover what an earlier process left (see ``recover``), then start dispatching."""
        found = self.recover()
        self._dispatcher.start()
        return found

    def recover(self) -> builtins.list[Job]:
        """At start-up: fail jobs left VALIDATING by a process that died in CreateJob; return the QUEUED
        and RUNNING jobs the dispatchers will (re)claim (they resume from their latest complete checkpoint).

        One replica (SQLite) ends every lease now, since they all belong to a process that is gone;
        with several replicas a RUNNING job is claimed again only once its lease expires."""
        if self._d.single_replica and (ended := self._d.repository.expire_leases()):
            log.warning("ended the leases of %d running job(s) left by an earlier process; they resume here. On "
                        "SQLite only one training process may use the database: run several on PostgreSQL", ended)
        pending = []
        cutoff = datetime.now(UTC) - _ABANDONED_VALIDATION
        for job in self._d.repository.unfinished():
            if job.status is not JobStatus.VALIDATING:
                pending.append(job)
            elif self._d.single_replica or job.created_at < cutoff:
                self._ctx.fail(job, "ABORTED", "the service stopped while the job was being validated: create it "
                               "again", self._d.credentials.identity_for(job.tenant))
        return pending

    def shutdown(self) -> None:
        """Claim nothing more, stop the runs of this process after their current step and hand their jobs
        back (QUEUED, lease released: another replica resumes them from their latest checkpoint)."""
        self._stopping.set()
        for run in self._dispatcher.stop_claiming():
            run.interrupt()

    def close(self) -> None:
        """Stop dispatching and heartbeats (after the runs ended: ``shutdown`` then the executor)."""
        self._dispatcher.close()

    @property
    def dispatcher(self) -> Dispatcher:
        """This replica's dispatcher (its replica id; ``dispatch_once``/``heartbeat_once`` for tests)."""
        return self._dispatcher

    # ------------------------------------------------------------------ read / cancel

    def get(self, tenant: str, job_id: str) -> Job:
        """One job of the tenant (``NotFound`` for another tenant's)."""
        return self._d.repository.get(tenant, job_id)

    def metrics_file(self, tenant: str, job_id: str) -> bytes:
        """The job's metrics file (JSON lines) as it is now.

        Raises:
            NotFound: no such job for the tenant.
            FailedPrecondition: the job has logged no metrics yet, or this service keeps no files.
        """
        job = self._d.repository.get(tenant, job_id)
        data = self._d.files.read(metrics_key(tenant, job.id)) if self._d.files is not None else None
        if data is None:
            raise FailedPrecondition(f"job {job.id} has no metrics file yet ({job.status.name}): it is written "
                                     "from the first logged step on; try again once the job is running")
        return data

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
        run = self._dispatcher.run_of(job_id)
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

