"""Training service settings: the shared ones plus its own (``TUNEFORGE_*``).

A light module (pydantic only) so that ``tuneforge.common.settings`` can import it to accept these
variables in an environment shared by every service. The shared settings this service relies on:

- ``datasets_address`` / ``checkpoints_address``: the peers it calls on the caller's behalf. Both
  are needed to run jobs; without them the service still starts (health, reads, listing) and
  CreateJob answers FAILED_PRECONDITION naming the missing setting;
- ``models_dir``: base models by name, ``<models_dir>/<name>/`` (after the object store's
  ``tenants/<tenant>/models/<name>/``);
- ``auth_tokens``: also the identities jobs act as when they resume after a restart (the caller's
  own token is gone by then): the first token configured for the job's tenant.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from tuneforge.common.settings import ServiceSettings

if TYPE_CHECKING:
    from tuneforge.training.domain.admission import ClusterCapacity
    from tuneforge.training.domain.dispatch import Quotas
    from tuneforge.training.domain.limits import JobLimits

GIB = 1024**3


class TrainingSettings(ServiceSettings):
    """Training service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "training"
    max_running_jobs: int = Field(1, ge=1, le=64, description="Jobs trained at the same time by this replica "
                                  "(process); the others wait QUEUED for a free slot on any replica.")
    train_max_running_jobs_total: int = Field(0, ge=0, le=100_000, description="Jobs trained at the same time by "
                                              "all replicas together (0 = no cap beyond each replica's "
                                              "max_running_jobs).")
    train_tenant_quotas: str = Field("", description="Per-tenant quotas and fair-share weights: JSON or the path "
                                     "of a JSON file, e.g. {\"*\": {\"max_running_jobs\": 2, \"max_workers\": 8}, "
                                     "\"acme\": {\"max_gpus\": 4, \"share\": 2}} ('*' = every other tenant; "
                                     "keys max_running_jobs, max_workers, max_gpus, share; '' = no limits, equal "
                                     "shares).")
    train_lease_ttl_s: float = Field(30.0, ge=1, le=3600, description="How long a replica's claim on a running "
                                     "job lasts without a heartbeat; a replica that dies loses its jobs to the "
                                     "others this long after its last heartbeat.")
    train_heartbeat_interval_s: float = Field(10.0, gt=0, le=1200, description="How often a replica renews its "
                                              "leases (at most a third of TUNEFORGE_TRAIN_LEASE_TTL_S).")
    train_dispatch_poll_s: float = Field(2.0, gt=0, le=300, description="How often a replica looks for queued "
                                         "jobs created elsewhere and expired leases (its own CreateJob wakes it "
                                         "at once).")
    train_replica_id: str = Field("", max_length=200, description="This replica's name as lease owner ('' = "
                                  "<hostname>-<pid>; unique per process).")
    train_work_dir: Path | None = Field(None, description="Scratch folder for job inputs (default <data_dir>/work).")
    train_poll_interval_s: float = Field(0.5, gt=0, le=60, description="How often StreamJobEvents looks for new "
                                         "events.")
    train_ray_address: str = Field("", description="Ray cluster for every job ('' = in-process for one worker, a "
                                   "local Ray for several; RAY_ADDRESS is used when set).")
    train_peer_timeout_s: float = Field(60.0, gt=0, description="Deadline of each call to the dataset/checkpoint "
                                        "services.")
    ray_storage_path: str = Field("", description="Ray Train's run state for multi-worker jobs: a folder every Ray "
                                  "node can write, or s3://bucket/prefix?endpoint=host:port[&secure=false] with "
                                  "the TUNEFORGE_S3_* credentials ('' = the temp folder; the engine reads the "
                                  "variable itself).")
    integration_secrets_dir: Path | None = Field(None, description="Integration secrets jobs may name (W&B, "
                                                 "MLflow credentials): <dir>/<tenant>/<name>/<KEY> files, e.g. "
                                                 "Kubernetes Secrets mounted per tenant (unset: none; TensorBoard "
                                                 "needs none).")

    # Operator caps on what one job may ask for (the spec's own ranges are the hard limits).
    train_max_workers: int = Field(16, ge=1, le=1024, description="Largest resources.num_workers a job may ask for.")
    train_max_steps: int = Field(1_000_000, ge=1, le=10_000_000, description="Largest hyperparameters.max_steps "
                                 "(and warmup_steps, eval/save cadence) a job may ask for.")
    train_max_seq_length: int = Field(32768, ge=8, le=131072, description="Largest hyperparameters."
                                      "max_seq_length a job may ask for.")
    train_max_micro_batch_size: int = Field(256, ge=1, le=1024, description="Largest hyperparameters."
                                            "micro_batch_size a job may ask for.")
    train_max_gradient_accumulation_steps: int = Field(256, ge=1, le=1024, description="Largest hyperparameters."
                                                       "gradient_accumulation_steps a job may ask for.")

    # The cluster jobs are admitted against (the chart fills these from the Ray worker group's resources).
    train_gpus: int | None = Field(None, ge=0, le=100_000, description="GPUs the training cluster has for one job "
                                   "(Ray workers with a GPU each); 0 = CPU-only: jobs asking resources.use_gpu are "
                                   "refused; unset = not declared: not checked.")
    train_gpu_memory_gib: float = Field(0.0, ge=0, le=4096, description="Memory of one GPU in GiB; jobs whose "
                                        "planned peak per GPU does not fit are refused before queueing (0 = not "
                                        "checked).")
    train_cpu_workers: int = Field(0, ge=0, le=100_000, description="CPU workers a job may use on this cluster "
                                   "(0 = only TUNEFORGE_TRAIN_MAX_WORKERS caps resources.num_workers).")
    train_cpu_worker_memory_gib: float = Field(0.0, ge=0, le=65536, description="Memory one CPU worker may use in "
                                               "GiB; CPU jobs whose planned peak per worker does not fit are refused "
                                               "(0 = not checked).")
    train_memory_margin: float = Field(0.1, ge=0, lt=1, description="Share of each device's memory a job may not "
                                       "plan for (CUDA context, allocator fragmentation, the planner's error).")

    def capacity(self) -> ClusterCapacity:
        """The cluster as admission reads it."""
        from tuneforge.training.domain.admission import ClusterCapacity  # this module stays pydantic-only
        return ClusterCapacity(gpus=self.train_gpus, gpu_memory_bytes=int(self.train_gpu_memory_gib * GIB),
                               cpu_workers=self.train_cpu_workers,
                               cpu_worker_memory_bytes=int(self.train_cpu_worker_memory_gib * GIB),
                               margin=self.train_memory_margin)
    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> TrainingSettings:
        if self.train_heartbeat_interval_s * 3 > self.train_lease_ttl_s:
            raise ValueError(f"TUNEFORGE_TRAIN_HEARTBEAT_INTERVAL_S ({self.train_heartbeat_interval_s}) must be at "
                             f"most a third of TUNEFORGE_TRAIN_LEASE_TTL_S ({self.train_lease_ttl_s}), so one "
                             "late heartbeat does not lose a lease: lower the interval or raise the TTL")
        from tuneforge.common.errors import InvalidInput  # this module stays pydantic-only
        try:
            self.quotas()
        except InvalidInput as exc:  # reported with the other settings, at start-up
            raise ValueError("; ".join(f"{v.field}: {v.description}" for v in exc.violations)) from None
        return self

    def replica_id(self) -> str:
        """This replica's lease-owner name."""
        return self.train_replica_id or f"{socket.gethostname()}-{os.getpid()}"

    def quotas(self) -> Quotas:
        """The tenant quotas and the cluster cap (``InvalidInput`` naming the setting when malformed)."""
        from tuneforge.training.domain.dispatch import parse_quotas  # this module stays pydantic-only
        return parse_quotas(self.train_tenant_quotas, self.train_max_running_jobs_total)

    def limits(self) -> JobLimits:
        """The operator's caps as the domain reads them."""
        from tuneforge.training.domain.limits import JobLimits  # this module stays pydantic-only
        return JobLimits(self.train_max_workers, self.train_max_steps, self.train_max_seq_length,
                         self.train_max_micro_batch_size, self.train_max_gradient_accumulation_steps)

    def resolved_work_dir(self) -> Path:
        """The scratch folder, defaulting to ``<data_dir>/work``."""
        return (self.train_work_dir or self.data_dir / "work").resolve()
