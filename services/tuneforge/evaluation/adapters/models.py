"""Model resolution: ``ModelRef`` -> local folders (``tuneforge.common.peers.models``, shared with training)."""

from __future__ import annotations

from tuneforge.common.peers.models import (
    ADAPTER_CONFIG,
    MODEL_CONFIG,
    CheckpointLookup,
    StoreModelResolver,
    model_folder,
)

__all__ = ["ADAPTER_CONFIG", "MODEL_CONFIG", "CheckpointLookup", "StoreModelResolver", "model_folder"]
