"""Plain results of ``tuneforge.common.peers`` that a service's domain may name (no grpc here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load locally: a base folder, and an adapter folder for LoRA checkpoints."""

    model_dir: Path
    adapter_dir: Path | None = None
    checkpoint_id: str = ""
    job_id: str = ""
