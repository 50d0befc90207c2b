"""Model building and loading for the engine.

Public API:
    load_model_and_tokenizer(spec, *, device="cpu", hf_ds_config=None, model_dir=None)
        the spec's model with its method applied (peft / bitsandbytes); see ``models.loading``.
    disable_bnb_cpu_repack(model)          the bitsandbytes CPU AVX512-BF16 trap fix
    trainable_parameter_names(model)       names of parameters with requires_grad
    default_target_modules(model_type)     per-architecture LoRA target modules (``models.targets``)
    tiny.build_tiny_model(out_dir, ...)    a tiny Llama + trained tokenizer (tests, demos)

Names are resolved lazily, so ``import tuneforge.engine.models`` does not import torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "load_model_and_tokenizer": "tuneforge.engine.models.loading",
    "disable_bnb_cpu_repack": "tuneforge.engine.models.loading",
    "trainable_parameter_names": "tuneforge.engine.models.loading",
    "resolve_model_dir": "tuneforge.engine.models.loading",
    "default_target_modules": "tuneforge.engine.models.targets",
    "resolve_target_modules": "tuneforge.engine.models.targets",
    "build_tiny_model": "tuneforge.engine.models.tiny",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
