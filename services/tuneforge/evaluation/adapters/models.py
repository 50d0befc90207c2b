"""Model resolution: ``ModelRef`` -> local folders.

The resolver moved to ``tuneforge.common.peers.models`` (shared with training); this subclass only
returns the evaluation domain's ``ResolvedModel``.
"""

from __future__ import annotations

from tuneforge.common.auth import Identity
from tuneforge.common.peers import models as shared
from tuneforge.common.peers.models import ADAPTER_CONFIG, MODEL_CONFIG, CheckpointLookup, model_folder
from tuneforge.evaluation.domain.model import ModelRef
from tuneforge.evaluation.domain.ports import ResolvedModel

__all__ = ["ADAPTER_CONFIG", "MODEL_CONFIG", "CheckpointLookup", "StoreModelResolver", "model_folder"]


class StoreModelResolver(shared.StoreModelResolver):
    """Implements ``ModelResolver`` (see ``tuneforge.common.peers.models.StoreModelResolver``)."""

    def resolve(self, caller: Identity, ref: ModelRef) -> ResolvedModel:  # type: ignore[override]
        """Local folders for a base model or a checkpoint (adapter applied onto its base)."""
        r = super().resolve(caller, ref)
        return ResolvedModel(r.model_dir, r.adapter_dir, r.checkpoint_id, r.job_id)
