"""Per-architecture LoRA target modules.

Public API:
    DEFAULT_TARGET_MODULES: model_type -> module-name suffixes LoRA adapts by default (attention and
        MLP projections: the "all linear layers but the head" choice of QLoRA).
    default_target_modules(model_type) -> list[str] | None: None when the architecture is unknown.
    linear_module_names(model) -> list[str]: distinct suffixes of the model's Linear-like layers
        (what a user may list in ``method.lora.target_modules``), the LM head excluded.
    resolve_target_modules(requested, model) -> list[str]: ``requested`` checked against the model,
        or the architecture default; raises InvalidInput on ``method.lora.target_modules`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
_HEADS = {"lm_head", "embed_out", "score"}
_FIELD = "method.lora.target_modules"


def default_target_modules(model_type: str) -> list[str] | None:
    """The default LoRA targets of an architecture (``config.model_type``), or None if unknown."""
    found = DEFAULT_TARGET_MODULES.get(model_type)
    return list(found) if found else None


def linear_module_names(model: Any) -> list[str]:
    """Distinct last-name parts of Linear / Conv1D / bitsandbytes linear layers, heads excluded."""
    import torch

    names = set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in (
            "Conv1D",
            "Linear4bit",
            "Linear8bitLt",
        )
        leaf = name.rsplit(".", 1)[-1]
        if is_linear and leaf not in _HEADS:
            names.add(leaf)
    return sorted(names)


def resolve_target_modules(requested: Sequence[str] | None, model: Any) -> list[str]:
    """The target modules to adapt: the requested ones (each must exist) or the architecture default.

    Raises:
        InvalidInput: on ``method.lora.target_modules`` naming the missing modules and what exists.
    """
    available = linear_module_names(model)
    model_type = getattr(model.config, "model_type", "?")
    if requested is None:
        default = default_target_modules(model_type)
        if default is None:
            raise InvalidInput.field_error(
                _FIELD,
                f"no default for model type {model_type!r}; list the "
                f"modules to adapt, e.g. some of {available}",
            )
        requested = [m for m in default if m in available] or default
    missing = [m for m in requested if m not in available]
    if missing:
        raise InvalidInput.of(
            [
                FieldViolation(
                    _FIELD, f"{m!r} is not a linear layer of this {model_type} model; choose from {available}"
                )
                for m in missing
            ],
            what="LoRA target modules",
        )
    return list(requested)
