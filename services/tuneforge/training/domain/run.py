"""One job's run: inputs to local files, the engine, events, checkpoint registration, final status.

Reads top to bottom in ``JobRun.execute``: take the job the dispatcher claimed for this replica
(RUNNING under the run's lease; every write of the run is fenced by that lease), make the stored
spec's references local (the leased dataset versions' rows, the base model's folder; the run name is
the job id, so a re-run resumes from the job's latest complete checkpoint), train while turning engine
progress into job events, then finish: SUCCEEDED with the best (else final) checkpoint, CANCELLED,
or FAILED with an ``ErrorInfo`` that names cause and fix. Dataset leases are released once the job
ends; a run interrupted by a service stop hands its job back QUEUED (another replica claims it at
once); a run whose lease was lost (``lose``) stops and writes nothing more.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from tuneforge.common.auth import Identity
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.ray_connection import RAY_UNREACHABLE
from tuneforge.engine.spec import TrainingSpec, load_spec
from tuneforge.training.domain.files import JobFiles, MetricsRecorder
from tuneforge.training.domain.model import (
    ErrorInfo,
    EventKind,
    Job,
    JobCheckpoint,
    JobEvent,
    JobStatus,
    Lease,
    Pace,
    dataset_versions,
)
from tuneforge.training.domain.ports import (
    CheckpointPublisher,
    DatasetAccess,
    JobRepository,
    LeaseLost,
    ModelLocator,
    Outcome,
    Progress,
    TrainingEngine,
)

log = logging.getLogger(__name__)

# A run that lost its Ray cluster waits this long (doubling per restart, at most the max) before its job
# is re-queued: Ray keeps a dropped client's session for its reconnect grace period (30 s by default).
RAY_RETRY_BACKOFF_S = 30.0
RAY_RETRY_BACKOFF_MAX_S = 300.0

METRIC_KEYS: tuple[str, ...] = ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "peak_memory_bytes",
                               "eval_loss", "eval_perplexity", "epoch")
# Reward-model and KTO metrics (the API's Metrics fields 30-34).
METRIC_KEYS += ("reward_accuracy", "reward_margin_mean", "eval_reward_accuracy", "eval_reward_margin_mean", "kto_kl")
# Online RL (GRPO, RLOO, PPO): convert.metrics_to_proto names them reward_mean ... response_length.
METRIC_KEYS += ("reward", "reward_std", "kl", "entropy", "clip_ratio", "completion_length", "value_loss")


def lease_holder(job: Job) -> str:
    """The dataset-lease holder name of a job."""
    return f"job:{job.id}"


def release_leases(datasets: DatasetAccess, caller: Identity | None, job: Job, only: list[str] | None = None) -> None:
    """Release the job's dataset leases; failures are logged (the lease outlives the job, no harm done)."""
    if caller is None:
        log.warning("job %s: no identity of tenant %s to release its dataset leases", job.id, job.tenant)
        return
    for version_id in dataset_versions(job.spec) if only is None else only:
        try:
            datasets.release_lease(caller, version_id, lease_holder(job))
        except TuneforgeError as exc:
            log.warning("job %s: could not release the lease on %s: %s", job.id, version_id, exc.message)


def status_event(repository: JobRepository, job: Job) -> None:
    """Append the job's current status to its event log."""
    repository.add_event(job.tenant, job.id, EventKind.STATUS, {"status": job.status.name})


def error_info(exc: BaseException) -> ErrorInfo:
    """An ``ErrorInfo`` for a failed run: the error's own message for tuneforge errors, else a generic one."""
    if isinstance(exc, TuneforgeError):
        return ErrorInfo(exc.family.value, exc.message, exc.field or "")
    return ErrorInfo("INTERNAL", f"training stopped on an unexpected {type(exc).__name__}: the service log has "
                                 "the details; retry, or report it with the job id")


class LeasedRepository:
    """The job repository as one run sees it: every write to its job is fenced by the run's lease, so a
    replica that lost the job (another claimed it after the lease expired) cannot write to it."""

    def __init__(self, inner: JobRepository, lease: Lease) -> None:
        self._inner, self.lease = inner, lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def save(self, job: Job, *, expected: Collection[JobStatus] = (), lease: Lease | None = None) -> bool:
        """Save, fenced by the run's lease when ``job`` is the run's job."""
        return self._inner.save(job, expected=expected, lease=lease or self._mine(job.id))

    def add_event(self, tenant: str, job_id: str, kind: EventKind, data: Mapping[str, Any],
                  lease: Lease | None = None) -> JobEvent:
        """Append, fenced by the run's lease when ``job_id`` is the run's job (``LeaseLost`` otherwise)."""
        return self._inner.add_event(tenant, job_id, kind, data, lease or self._mine(job_id))

    def _mine(self, job_id: str) -> Lease | None:
        return self.lease if job_id == self.lease.job_id else None


@dataclass
class RunContext:
    """What every run shares: the ports and the service's settings."""

    repository: JobRepository
    datasets: DatasetAccess
    models: ModelLocator
    checkpoints: CheckpointPublisher
    engine: TrainingEngine
    ray_address: str
    stopping: threading.Event
    files: JobFiles | None = None  # where the job's metrics file goes (none: no file)

    def log(self, job: Job, level: str, message: str) -> None:
        """Append a log event."""
        self.repository.add_event(job.tenant, job.id, EventKind.LOG, {"level": level, "message": message})

    def finish(self, job: Job, status: JobStatus, caller: Identity | None, error: ErrorInfo | None = None) -> bool:
        """End the job (compare-and-set from its live states); releases its leases. Returns whether it ended."""
        previous = job.status
        job.move_to(status)
        job.finished_at, job.error = datetime.now(UTC), error
        if not self.repository.save(job, expected=(previous,)):
            return False
        if error is not None:
            self.log(job, "ERROR", f"{error.code}: {error.message}")
        status_event(self.repository, job)
        release_leases(self.datasets, caller, job)
        return True

    def fail(self, job: Job, code: str, message: str, caller: Identity | None) -> None:
        """End the job FAILED with ``code`` and ``message``."""
        self.finish(job, JobStatus.FAILED, caller, ErrorInfo(code, message))

    def cancel_idle(self, job: Job, caller: Identity | None) -> None:
        """Cancel a job no run is training (queued, or not held by this process)."""
        current = self.repository.get(job.tenant, job.id)
        if current.status.terminal or (current.status is JobStatus.RUNNING and caller is None):
            return
        self.finish(current, JobStatus.CANCELLED, caller)


class JobRun:
    """Trains one job under its lease; ``cancel`` (a user), ``interrupt`` (a service stop) and ``lose``
    (the lease went to another replica) stop it after the current step."""

    def __init__(self, ctx: RunContext, tenant: str, job_id: str, caller: Identity, lease: Lease) -> None:
        self.ctx = replace(ctx, repository=LeasedRepository(ctx.repository, lease))
        self.tenant, self.job_id, self.caller, self.lease = tenant, job_id, caller, lease
        self._cancel = threading.Event()
        self._user_cancelled = False
        self._lost = False
        self.ending = False  # recording its end: a lease that is gone then is the run's own doing
        self._starts = 0
        self._registered: dict[str, JobCheckpoint] = {}
        self._pace = Pace()
        self._metrics_file: MetricsRecorder | None = None
        self.job: Job | None = None

    def lose(self) -> None:
        """The lease is gone (renewal found another claim, or none succeeded within its TTL): stop now;
        fenced writes already fail, so nothing more of this run reaches the job."""
        self._lost = True
        self._cancel.set()

    def cancel(self) -> None:
        """A user cancelled the job: it ends CANCELLED."""
        self._user_cancelled = True
        self._cancel.set()

    def interrupt(self) -> None:
        """The service is stopping: the job goes back to QUEUED for the next process."""
        self._cancel.set()

    def execute(self) -> None:
        """Run the job to its end (every failure is recorded on the job, never raised)."""
        job = self._claim()
        if job is None:
            return
        if self.ctx.files is not None:
            self._metrics_file = MetricsRecorder(self.ctx.files, self.ctx.repository, job.tenant, job.id)
        try:
            outcome = self.ctx.engine.run(self._engine_spec(job), self._on_progress, self._cancel)
            self._conclude(job, outcome)
        except Exception as exc:  # every failure becomes FAILED with an ErrorInfo
            if isinstance(exc, LeaseLost):
                self._lost = True
            elif isinstance(exc, TuneforgeError) and self._may_run_again(job, exc):
                self._requeue(job, exc)
                return
            elif not isinstance(exc, TuneforgeError):
                log.exception("job %s failed", job.id)
            self._end_or_requeue(job, JobStatus.FAILED, error_info(exc))
        finally:
            if self._metrics_file is not None and not self._lost:  # a lost job's file is its new owner's
                self._metrics_file.flush()

    def _claim(self) -> Job | None:
        """The job as the dispatcher claimed it (RUNNING under this run's lease), announced in its events."""
        job = self.ctx.repository.get(self.tenant, self.job_id)
        if job.status is not JobStatus.RUNNING:
            return None  # cancelled since the claim
        if self._cancel.is_set():  # stopped before it started: hand back, or end it cancelled
            self._end_or_requeue(job, JobStatus.CANCELLED, None)
            return None
        try:
            if job.estimated_finish is not None:  # an earlier run's (a hand-back or a takeover): measure anew
                job.estimated_finish = None
                self.ctx.repository.save(job, expected=(JobStatus.RUNNING,))
            status_event(self.ctx.repository, job)
            self.ctx.log(job, "INFO", f"replica {self.lease.owner} runs the job (lease epoch {self.lease.epoch}"
                         + (", resuming it after another replica's run" if self.lease.epoch > 1 else "") + ")")
        except LeaseLost:
            return None  # cancelled (or claimed again) in between
        self.job = job
        self._registered = {c.uri: c for c in self.ctx.repository.checkpoints(job.tenant, job.id) if c.uri}
        return job

    def _engine_spec(self, job: Job) -> TrainingSpec:
        """The job's stored spec with this deployment's Ray address.

        Dataset versions and registered base models stay references: every worker reads them from the
        shared store itself (a checkpoint used as the base is still made local here). Each input's
        origin goes to the job's events.
        """
        doc = job.spec.resolved_dict()
        doc["resources"]["ray_address"] = self.ctx.ray_address or None  # this deployment's, not the creator's
        model = job.spec.model
        if model.manifest_key:
            self.ctx.log(job, "INFO", f"input base_model: {model.name}, read by the workers from "
                                      f"{model.store_uri}/{model.manifest_key} (sha256 {model.manifest_sha256})")
        else:  # a full-weight checkpoint as the base: resolved on this machine
            model_path = self.ctx.models.locate(self.caller, model.name or "")
            doc["model"] = {**doc["model"], "name": None, "path": str(model_path)}
            self.ctx.log(job, "INFO", f"input base_model: checkpoint {model.name} from {model_path}")
        reward_model = job.spec.objective.rl.reward_model
        if reward_model:  # a reward-model checkpoint or registered model: made local here, like a base checkpoint
            rm_path, rm_adapter = self.ctx.models.locate_reward_model(self.caller, reward_model)
            doc["objective"]["rl"] = {**doc["objective"]["rl"], "reward_model": None, "reward_model_path": str(rm_path),
                                      "reward_model_adapter_path": str(rm_adapter) if rm_adapter else None}
            self.ctx.log(job, "INFO", f"input reward_model: {reward_model} from {rm_path}"
                                      + (f" with the adapter {rm_adapter}" if rm_adapter else ""))
        data = job.spec.data
        sources = [("train", data.train), ("validation", data.validation),
                   *((f"mixture[{i}]", m.source) for i, m in enumerate(data.mixture))]
        for slot, source in sources:
            if source is not None and source.dataset_version:
                self.ctx.log(job, "INFO", f"input {slot}: dataset version {source.dataset_version}, "
                             f"{f'split {source.split}' if source.split else 'every row'}, read by the workers "
                             f"from {source.store_uri}/{source.manifest_key} (sha256 {source.manifest_sha256})")
        return load_spec(doc)

    # ---------------------------------------------------------------- progress

    def _on_progress(self, p: Progress) -> None:
        job = self.job
        assert job is not None
        repo = self.ctx.repository
        if p.kind == "started":
            self._starts += 1
            job.total_steps = int(p.metrics.get("total_steps", job.total_steps))
            if self._starts > 1:  # Ray restarted the worker group; the recipe resumed
                self._pace.reset()
                job.restarts += 1
                self.ctx.log(job, "WARNING", f"workers restarted (restart {job.restarts}); resuming at step {p.step}")
            repo.save(job, expected=(JobStatus.RUNNING,))
        elif p.kind in ("step", "eval"):
            self._metrics(job, p)
        elif p.kind == "checkpoint":
            self._publish(job, p.uri, p.step, p.metrics)
        elif p.kind == "resumed":
            job.current_step = p.step
            self.ctx.log(job, "INFO", f"resumed from the checkpoint at step {p.step} ({p.uri})")
        elif p.kind in ("early_stopped", "finished"):
            self.ctx.log(job, "INFO", f"{p.kind.replace('_', ' ')} at step {p.step}" + (f": {p.message}" if p.message else ""))

    def _metrics(self, job: Job, p: Progress) -> None:
        data: dict[str, float] = {"step": float(p.step)}
        data |= {k: float(v) for k, v in p.metrics.items() if k in METRIC_KEYS and math.isfinite(float(v))}
        if p.kind == "step":
            job.current_step = p.step
            tokens = p.metrics.get("tokens_per_s", 0.0) * p.metrics.get("step_time_s", 0.0)
            job.trained_tokens += round(tokens) if math.isfinite(tokens) else 0
            self._pace.observe(job, datetime.now(UTC), time.monotonic())
            self.ctx.repository.save(job, expected=(JobStatus.RUNNING,))
        event = self.ctx.repository.add_event(job.tenant, job.id, EventKind.METRICS, data)
        if self._metrics_file is not None:
            self._metrics_file.add(event, now=p.kind == "eval")

    def _publish(self, job: Job, uri: str, step: int, metrics: Mapping[str, float]) -> JobCheckpoint | None:
        if uri in self._registered:
            return self._registered[uri]
        try:
            ckpt = self.ctx.checkpoints.publish(self.caller, job, uri, step, metrics, self._lineage_version(job))
        except TuneforgeError as exc:  # e.g. pruned by the engine before it could be registered
            self.ctx.log(job, "WARNING", f"checkpoint at step {step} was not registered: {exc.message}")
            return None
        self._registered[uri] = ckpt
        self.ctx.repository.add_checkpoint(job.tenant, job.id, ckpt)
        self.ctx.repository.add_event(job.tenant, job.id, EventKind.CHECKPOINT,
                                      {"checkpoint_id": ckpt.checkpoint_id, "step": step})
        return ckpt

    @staticmethod
    def _lineage_version(job: Job) -> str:
        return next(iter(dataset_versions(job.spec)), "")

    # ---------------------------------------------------------------- end

    def _conclude(self, job: Job, outcome: Outcome) -> None:
        job.current_step = outcome.steps
        if outcome.status == "cancelled":
            self._end_or_requeue(job, JobStatus.CANCELLED, None)
            return
        if self._user_cancelled:  # finished its last step while the cancel was on its way
            self._end_or_requeue(job, JobStatus.CANCELLED, None)
            return
        result = None
        for uri in (outcome.best_checkpoint_uri, outcome.last_checkpoint_uri):
            if uri and (result := self._registered.get(uri) or self._publish(job, uri, outcome.steps, outcome.metrics)):
                break
        if result is None:
            self._end_or_requeue(job, JobStatus.FAILED, ErrorInfo(
                "FAILED_PRECONDITION", "training finished but no checkpoint could be registered: check that the "
                "checkpoint service (TUNEFORGE_CHECKPOINTS_ADDRESS) shares this service's object store"))
            return
        job.result_checkpoint_id = result.checkpoint_id
        self._end_or_requeue(job, JobStatus.SUCCEEDED, None)

    def _end_or_requeue(self, job: Job, status: JobStatus, error: ErrorInfo | None) -> None:
        """End the job, unless its lease is gone (write nothing) or the service is stopping under it:
        then it goes back QUEUED, its lease released, for another replica (or the next process)."""
        self.ending = True
        if self._lost:
            log.warning("job %s: lease epoch %d lost to another claim; this run stopped without writing its end",
                        job.id, self.lease.epoch)
            return
        try:
            if self.ctx.stopping.is_set() and not self._user_cancelled:
                self._hand_back(job)
                return
            self.ctx.finish(job, status, self.caller, error)
        except LeaseLost:
            log.warning("job %s: lease epoch %d lost before the run could record its end", job.id, self.lease.epoch)

    def _may_run_again(self, job: Job, exc: TuneforgeError) -> bool:
        """The Ray cluster was unreachable or dropped the connection (a head restarting, a pod evicted):
        the job is not at fault, so it runs again, up to ``resources.max_failures`` times in all."""
        return (exc.reason == RAY_UNREACHABLE and not self._cancel.is_set()
                and job.restarts < job.spec.resources.max_failures)

    def _requeue(self, job: Job, exc: TuneforgeError) -> None:
        """Wait out the backoff holding the lease (the Ray cluster keeps a dropped client's session, and
        its run, for its reconnect grace period; a head that restarts needs time), then back to QUEUED
        (restarts + 1, the lease released): the next claim resumes the job from its latest complete
        checkpoint. A cancel, a service stop or a lost lease during the wait ends it as those do."""
        delay = min(RAY_RETRY_BACKOFF_S * 2 ** job.restarts, RAY_RETRY_BACKOFF_MAX_S)
        try:
            self.ctx.log(job, "WARNING", f"{exc.message}; the job is re-queued in {delay:.0f} s (restart "
                         f"{job.restarts + 1} of at most {job.spec.resources.max_failures}): it resumes from its "
                         "latest complete checkpoint")
        except LeaseLost:
            self._lost = True
            return
        if self._cancel.wait(delay):
            self._end_or_requeue(job, JobStatus.CANCELLED, None)
            return
        self.ending = True
        try:
            job.restarts += 1
            self.ctx.repository.save(job, expected=(JobStatus.RUNNING,))
            job.move_to(JobStatus.QUEUED)
            status_event(self.ctx.repository, job)
            if not self.ctx.repository.release(self.lease):
                log.warning("job %s: its lease was lost while it was re-queued", job.id)
        except LeaseLost:
            log.warning("job %s: lease epoch %d lost before the run could re-queue it", job.id, self.lease.epoch)

    def _hand_back(self, job: Job) -> None:
        """Graceful stop: progress saved, events say so (under the lease), then the lease is released."""
        self.ctx.repository.save(job, expected=(JobStatus.RUNNING,))  # the counters; the release moves the status
        job.move_to(JobStatus.QUEUED)
        self.ctx.log(job, "WARNING", f"replica {self.lease.owner} is stopping: job re-queued; another replica (or "
                     "the next process) resumes it from its latest complete checkpoint")
        status_event(self.ctx.repository, job)
        if not self.ctx.repository.release(self.lease):
            log.warning("job %s: its lease was lost while it was handed back", job.id)
