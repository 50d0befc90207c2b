"""What the training domain needs from the outside world; ``adapters/`` implement these."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneforge.common.auth import Identity
from tuneforge.common.errors import Aborted
from tuneforge.engine.spec import TrainingSpec
from tuneforge.training.domain.dispatch import Candidate, Decision, Running
from tuneforge.training.domain.model import (
    EventKind,
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobStatus,
    Lease,
)


class LeaseLost(Aborted):
    """A fenced write found that the run's lease no longer holds the job: the run must stop at once."""


@dataclass(frozen=True)
class Claim:
    """What one dispatch round did: the job claimed (RUNNING, ``job.lease`` set; None when none may start)
    and the queued jobs whose wait reason changed (job id -> (tenant, reason))."""

    job: Job | None
    reasons: Mapping[str, tuple[str, str]]


class JobRepository(Protocol):
    """Jobs, their event logs and registered checkpoints; every tenant-facing call is tenant-scoped."""

    def add(self, job: Job) -> Job:
        """Insert; on an existing (tenant, idempotency_key) return the stored job unchanged."""
        ...

    def get(self, tenant: str, job_id: str) -> Job:
        """One job; ``NotFound`` when absent or of another tenant."""
        ...

    def find_by_key(self, tenant: str, idempotency_key: str) -> Job | None:
        """The tenant's job created with ``idempotency_key``, if any."""
        ...

    def list(self, tenant: str, filters: JobFilter, *, limit: int, offset: int) -> builtins.list[Job]:
        """The tenant's jobs matching ``filters``, newest first."""
        ...

    def save(self, job: Job, *, expected: Collection[JobStatus] = (), lease: Lease | None = None) -> bool:
        """Update the job's mutable fields; with ``expected``, only while its stored status is one of
        them (compare-and-set); with ``lease``, only while that lease holds the job (fenced). Returns
        whether it was updated."""
        ...

    def claim_next(self, owner: str, ttl_s: float,
                   choose: Callable[[builtins.list[Candidate], builtins.list[Running]], Decision]) -> Claim:
        """Claim for ``owner`` the job ``choose`` picks among those that may start, atomically across
        replicas; store the changed wait reasons."""
        ...

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        """Extend a lease that still holds its RUNNING job; None when it was lost."""
        ...

    def release(self, lease: Lease) -> bool:
        """Give a held job back: RUNNING -> QUEUED without a lease. Returns whether it was still held."""
        ...

    def expire_leases(self) -> int:
        """End every lease now (a one-replica start-up). Returns how many were ended."""
        ...

    def unfinished(self) -> builtins.list[Job]:
        """Every tenant's VALIDATING, QUEUED and RUNNING jobs, oldest first (start-up recovery)."""
        ...

    def add_event(self, tenant: str, job_id: str, kind: EventKind, data: Mapping[str, Any],
                  lease: Lease | None = None) -> JobEvent:
        """Append an event with the job's next sequence number; with ``lease``, fenced (``LeaseLost``)."""
        ...

    def events_after(self, tenant: str, job_id: str, sequence: int, limit: int = 500) -> builtins.list[JobEvent]:
        """The job's events with a sequence greater than ``sequence``, in order."""
        ...

    def add_checkpoint(self, tenant: str, job_id: str, checkpoint: JobCheckpoint) -> None:
        """Record a registered checkpoint (idempotent on its id)."""
        ...

    def checkpoints(self, tenant: str, job_id: str) -> builtins.list[JobCheckpoint]:
        """The job's registered checkpoints by step."""
        ...


@dataclass(frozen=True)
class VersionFacts:
    """What a job needs to know of a dataset version it leased."""

    version_id: str
    kind: str
    split_counts: Mapping[str, int]
    manifest_uri: str = ""


@dataclass(frozen=True)
class StoreRef:
    """Where workers read an input (a dataset version, a base model): the shared store, the input's
    manifest there, and the manifest's sha256 (which pins every file it lists)."""

    store_uri: str
    manifest_key: str
    manifest_sha256: str


class DatasetAccess(Protocol):
    """The dataset service (leases) and the shared store (where versions live), on behalf of ``caller``."""

    def acquire_lease(self, caller: Identity, version_id: str, holder: str) -> VersionFacts:
        """Lease the version for ``holder`` (idempotent); ``NotFound`` for unknown or foreign ids."""
        ...

    def release_lease(self, caller: Identity, version_id: str, holder: str) -> None:
        """Release ``holder``'s lease (no error when it was already released)."""
        ...

    def reference(self, facts: VersionFacts) -> StoreRef:
        """The version as workers read it from the shared store (``FailedPrecondition`` when it lives in
        another store; ``NotFound`` when its manifest is missing)."""
        ...

    def describe(self, caller: Identity, version_id: str) -> VersionFacts:
        """The version's facts without leasing it (EstimateJob); ``NotFound`` for unknown or foreign ids."""
        ...

    def token_stats(self, facts: VersionFacts) -> Mapping[str, float]:
        """Token-length statistics the dataset service recorded in the version's manifest (``mean``,
        ``p50``, ``max``... per row, and ``row_count``); empty when it has none."""
        ...


class ModelLocator(Protocol):
    """Base models by name (or full-weight checkpoints by id) as local folders."""

    def locate(self, caller: Identity, base_model: str) -> Path:
        """The model's local folder; ``NotFound``/``InvalidInput`` naming ``base_model`` otherwise."""
        ...

    def locate_reward_model(self, caller: Identity, name: str) -> tuple[Path, Path | None]:
        """A reward model (checkpoint id or registered name) as a local folder plus, for a LoRA
        reward-model checkpoint, its adapter folder; ``NotFound``/``InvalidInput`` naming
        ``hyperparameters.reward_model`` otherwise (also for a model that is no reward model)."""
        ...

    def reference(self, caller: Identity, base_model: str) -> StoreRef | None:
        """A registered base model in the shared store (one found only in the models folder is registered
        first); None for a checkpoint id, which ``locate`` resolves. ``NotFound`` for unknown names."""
        ...

    def config(self, caller: Identity, base_model: str) -> Mapping[str, Any] | None:
        """The base model's ``config.json`` (what the memory planner sizes it from); None when it cannot
        be read."""
        ...


class CheckpointPublisher(Protocol):
    """Registers the engine's committed checkpoints with the checkpoint service."""

    def publish(self, caller: Identity, job: Job, uri: str, step: int, metrics: Mapping[str, float],
                dataset_version_id: str) -> JobCheckpoint:
        """Read the checkpoint's manifest at ``uri`` and register it with lineage; returns the record."""
        ...


@dataclass(frozen=True)
class Progress:
    """One engine event, as plain values (kinds: started, step, eval, checkpoint, resumed,
    early_stopped, finished)."""

    kind: str
    step: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str = ""
    uri: str = ""


@dataclass(frozen=True)
class Outcome:
    """How an engine run ended (status: completed, early_stopped or cancelled)."""

    status: str
    steps: int
    metrics: Mapping[str, float]
    last_checkpoint_uri: str = ""
    best_checkpoint_uri: str = ""


class TrainingEngine(Protocol):
    """Runs the engine on a spec (in this process, or on Ray per the spec's resources)."""

    def run(self, spec: TrainingSpec, on_progress: Callable[[Progress], None],
            cancel: threading.Event) -> Outcome:
        """Train (resuming from the run's latest complete checkpoint); raises ``TuneforgeError``s."""
        ...


class TenantCredentials(Protocol):
    """An identity to act for a tenant when no caller is present (jobs resumed after a restart)."""

    def identity_for(self, tenant: str) -> Identity | None:
        """An identity of ``tenant`` with a bearer token its peers accept, or None."""
        ...
