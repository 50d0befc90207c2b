"""One job's run: inputs to local files, the engine, events, checkpoint registration, final status.

Reads top to bottom in ``JobRun.execute``: claim the job (QUEUED -> RUNNING), make the stored
spec's references local (the leased dataset versions' rows, the base model's folder; the run name is
the job id, so a re-run resumes from the job's latest complete checkpoint), train while turning engine
progress into job events, then finish: SUCCEEDED with the best (else final) checkpoint, CANCELLED,
or FAILED with an ``ErrorInfo`` that names cause and fix. Leases are released once the job ends;
a run interrupted by a service stop leaves its job QUEUED for the next process.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tuneforge.common.auth import Identity
from tuneforge.common.errors import TuneforgeError
from tuneforge.engine.spec import TrainingSpec, load_spec
from tuneforge.training.domain.model import (
    ErrorInfo,
    EventKind,
    Job,
    JobCheckpoint,
    JobStatus,
    dataset_versions,
)
from tuneforge.training.domain.ports import (
    CheckpointPublisher,
    DatasetAccess,
    JobRepository,
    ModelLocator,
    Outcome,
    Progress,
    TrainingEngine,
)

log = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "peak_memory_bytes", "eval_loss",
               "eval_perplexity", "epoch")
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
    """Trains one job; ``cancel`` (a user) and ``interrupt`` (a service stop) stop it after the current step."""

    def __init__(self, ctx: RunContext, tenant: str, job_id: str, caller: Identity) -> None:
        self.ctx, self.tenant, self.job_id, self.caller = ctx, tenant, job_id, caller
        self._cancel = threading.Event()
        self._user_cancelled = False
        self._starts = 0
        self._registered: dict[str, JobCheckpoint] = {}
        self.job: Job | None = None

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
        try:
            outcome = self.ctx.engine.run(self._engine_spec(job), self._on_progress, self._cancel)
            self._conclude(job, outcome)
        except Exception as exc:  # every failure becomes FAILED with an ErrorInfo
            if not isinstance(exc, TuneforgeError):
                log.exception("job %s failed", job.id)
            self._end_or_requeue(job, JobStatus.FAILED, error_info(exc))

    def _claim(self) -> Job | None:
        job = self.ctx.repository.get(self.tenant, self.job_id)
        if job.status is not JobStatus.QUEUED or self._cancel.is_set():
            return None
        job.move_to(JobStatus.RUNNING)
        job.started_at = job.started_at or datetime.now(UTC)
        if not self.ctx.repository.save(job, expected=(JobStatus.QUEUED,)):
            return None  # cancelled meanwhile
        status_event(self.ctx.repository, job)
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
            rm_path = self.ctx.models.locate(self.caller, reward_model)
            doc["objective"]["rl"] = {**doc["objective"]["rl"], "reward_model": None, "reward_model_path": str(rm_path)}
            self.ctx.log(job, "INFO", f"input reward_model: {reward_model} from {rm_path}")
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
            self.ctx.repository.save(job, expected=(JobStatus.RUNNING,))
        self.ctx.repository.add_event(job.tenant, job.id, EventKind.METRICS, data)

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
        """End the job, unless the service is stopping under it: then it waits, QUEUED, for the next process."""
        if self.ctx.stopping.is_set() and not self._user_cancelled:
            job.move_to(JobStatus.QUEUED)
            if self.ctx.repository.save(job, expected=(JobStatus.RUNNING,)):
                self.ctx.log(job, "WARNING", "the training service is stopping: job re-queued; it resumes from its "
                             "latest complete checkpoint when the service starts again")
                status_event(self.ctx.repository, job)
            return
        self.ctx.finish(job, status, self.caller, error)
