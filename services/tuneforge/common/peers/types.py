"""Plain results of ``tuneforge.common.peers`` that a service's domain may name (no grpc here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneforge.common.storage.refs import StoredFolder


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load locally: a base folder, and an adapter folder for LoRA checkpoints.

    ``model_source``/``adapter_source`` are the same folders by store reference (None for a base
    model on the service's own disk): what a task on another machine (Ray) fetches. Resolved with
    ``download=False``, the local folders are where the service would download them, not filled.
    """

    model_dir: Path
    adapter_dir: Path | None = None
    checkpoint_id: str = ""
    job_id: str = ""
    model_source: StoredFolder | None = None
    adapter_source: StoredFolder | None = None
