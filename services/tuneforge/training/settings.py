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

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneforge.common.settings import ServiceSettings

if TYPE_CHECKING:
    from tuneforge.training.domain.limits import JobLimits


class TrainingSettings(ServiceSettings):
    """Training service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "training"
    max_running_jobs: int = Field(1, ge=1, le=64, description="Jobs trained at the same time by this process; "
                                  "the others wait QUEUED.")
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

    def limits(self) -> JobLimits:
        """The operator's caps as the domain reads them."""
        from tuneforge.training.domain.limits import JobLimits  # this module stays pydantic-only
        return JobLimits(self.train_max_workers, self.train_max_steps, self.train_max_seq_length,
                         self.train_max_micro_batch_size, self.train_max_gradient_accumulation_steps)

    def resolved_work_dir(self) -> Path:
        """The scratch folder, defaulting to ``<data_dir>/work``."""
        return (self.train_work_dir or self.data_dir / "work").resolve()
