"""Evaluation service settings: the shared ones plus its own (``TUNEFORGE_*``).

A light module (pydantic only) so that ``tuneforge.common.settings`` can import it to accept these
variables in an environment shared by every service. The shared settings this service relies on:

- ``models_dir``: base models by name, ``<models_dir>/<name>/`` (safetensors folders);
- ``checkpoints_address`` / ``datasets_address``: the peers it calls on the caller's behalf, with
  the caller's own bearer token (so a tenant reaches only what it could reach itself).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneforge.common.settings import ServiceSettings


class EvaluationSettings(ServiceSettings):
    """Evaluation service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "evaluation"
    eval_ray_address: str = Field("", description="Ray address for large jobs ('' = in-process only; 'local' = start one).")
    eval_ray_num_gpus: float = Field(0, ge=0, description="GPUs per Ray evaluation task (0 on CPU clusters).")
    eval_max_samples: int = Field(1000, ge=1, description="Cap on examples per dataset.")
    eval_max_new_tokens: int = Field(512, ge=1, description="Cap on generated tokens per example.")
    eval_inline_threshold_samples: int = Field(200, ge=0, description="Jobs up to this many examples run in-process.")
    eval_workers: int = Field(2, ge=1, le=64, description="Evaluations run at the same time.")
    eval_peer_timeout_s: float = Field(30.0, gt=0, description="Deadline of each call to the dataset/checkpoint services.")
