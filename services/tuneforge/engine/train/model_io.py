"""Saving and restoring weights: full models as safetensors folders, adapters as peft folders.

ZeRO-3 callers pass a gathered ``state_dict``; otherwise the model's own parameters are saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file

from tuneforge.common.errors import Internal

ADAPTER_FILE = "adapter_model.safetensors"


def is_peft(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (its saves hold the adapter only)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is part of the ml extra
        return False
    return isinstance(model, PeftModel)


def save_model_folder(
    model: torch.nn.Module, out_dir: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Save ``model`` to ``out_dir`` as safetensors (an adapter folder for peft models).

    Args:
        model: a transformers model or a peft model.
        out_dir: folder to write.
        state_dict: the full model's state dict when the parameters themselves are partitioned
            (ZeRO-3); peft extracts the adapter from it.

    Raises:
        Internal: when the save would be empty (a ZeRO-3 partition saved without gathering).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cast(Any, model).save_pretrained(out_dir, state_dict=state_dict)  # transformers or peft model
    files = list(out_dir.glob("*.safetensors"))
    if not files or all(f.stat().st_size < 1024 and _is_empty(f) for f in files):
        raise Internal(f"saving the model to {out_dir} produced no weights: gather parameters before saving")


def _is_empty(path: Path) -> bool:
    return all(t.numel() == 0 for t in load_file(str(path)).values())


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the folder's safetensors files (shards merged)."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def load_model_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a folder written by ``save_model_folder`` back into ``model`` (in place).

    Raises:
        Internal: when the folder lacks weights the model needs.
    """
    state = read_weights(folder)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise Internal(f"the adapter in {folder} does not fit the model: {result.unexpected_keys[:5]}")
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise Internal(
            f"the weights in {folder} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
