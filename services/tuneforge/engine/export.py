"""Export checkpoints as Hugging Face safetensors folders: merged LoRA, adapter only, full model.

Merging always happens on the *unquantized* base: for QLoRA the base is loaded in full precision
(never with a ``quantization_config``), because folding LoRA deltas into 4-bit weights either
fails or re-quantizes them and loses the update. Loading is safe by default: safetensors only,
``trust_remote_code=False``. Imports no grpc: the checkpoint service calls it in-process.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from tuneforge.common.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model",
)
_ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors")


def find_folder(root: Path, marker: str) -> Path:
    """The shallowest folder under ``root`` (``root`` included) holding ``marker``.

    Raises:
        FailedPrecondition: no such folder (the message says what was looked for).
    """
    hits = sorted(root.rglob(marker), key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise FailedPrecondition(f"the checkpoint holds no {marker}: it is not the expected kind of folder")
    return hits[0].parent


def _check_unquantized(base_dir: Path) -> None:
    config = json.loads((base_dir / MODEL_CONFIG).read_text())
    if config.get("quantization_config"):
        raise FailedPrecondition(
            f"base model {base_dir.name!r} is stored quantized ({config['quantization_config'].get('quant_method')}): "
            "merging a LoRA adapter needs the unquantized base weights; register the original base model"
        )


def _copy_tokenizer(src_dirs: list[Path], out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        for src in src_dirs:
            if (src / name).is_file():
                shutil.copy2(src / name, out_dir / name)
                break


def is_sequence_classifier(model_dir: Path) -> bool:
    """Whether the folder holds a sequence classifier (a reward model), by its config's architectures."""
    config = json.loads((model_dir / MODEL_CONFIG).read_text())
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or ())


def is_reward_adapter(adapter_dir: Path) -> bool:
    """Whether a peft adapter was trained on a sequence classifier (a reward model's LoRA: task SEQ_CLS)."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    return config.get("task_type") == "SEQ_CLS"


def load_base(base_dir: Path, dtype: torch.dtype = torch.float32, *, reward_model: bool | None = None) -> Any:
    """Load a base model unquantized, safetensors only, no remote code: a causal LM, or a sequence
    classifier with one output (a reward model) when ``reward_model`` (default: what the folder holds)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if not (base_dir / MODEL_CONFIG).is_file():
        raise FailedPrecondition(f"base model folder {base_dir.name!r} has no {MODEL_CONFIG}")
    _check_unquantized(base_dir)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False, "use_safetensors": True,
                              "low_cpu_mem_usage": True}
    if reward_model if reward_model is not None else is_sequence_classifier(base_dir):
        return AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, **kwargs)
    return AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)


def merge_lora(base_dir: Path, adapter_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    """Load the unquantized base, apply the adapter, fold it in; returns the plain model (a sequence
    classifier whose score head comes from the adapter, for a reward model's adapter)."""
    from peft import PeftModel

    require_safetensors_adapter(adapter_dir)
    base = load_base(base_dir, dtype, reward_model=is_reward_adapter(adapter_dir))
    match_vocab(base, adapter_dir)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False, use_safetensors=True)
    return model.merge_and_unload()


def require_safetensors_adapter(adapter_dir: Path) -> None:
    """Refuse adapters that are not safetensors-only: peft would fall back to a pickled
    ``adapter_model.bin``, and pickles are never loaded here."""
    pickled = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
    if not (adapter_dir / "adapter_model.safetensors").is_file() or pickled:
        raise InvalidInput.field_error(
            "adapter", f"{adapter_dir.name!r} must hold adapter_model.safetensors and no pickled weights "
            f"(found: {pickled or 'no safetensors'}): re-save it with safe_serialization=True")


def match_vocab(base: Any, adapter_dir: Path) -> None:
    """Grow the base's embeddings to the tokenizer saved with the adapter, when training added
    tokens (e.g. a pad token): the adapter then carries the resized embedding rows, and loading it
    onto the unresized base would fail with a shape mismatch."""
    from transformers import AutoTokenizer

    if not (adapter_dir / "tokenizer_config.json").is_file():
        return
    size = len(AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False))
    if size > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(size)


def export_merged(base_dir: Path, checkpoint_dir: Path, out_dir: Path,
                  dtype: torch.dtype = torch.float32) -> list[Path]:
    """Merge the LoRA adapter found in ``checkpoint_dir`` into the base and save a HF folder.

    Args:
        base_dir: the base model folder (config.json + safetensors, unquantized).
        checkpoint_dir: the downloaded checkpoint; its adapter folder is found by adapter_config.json.
        out_dir: the (new, empty) folder to write.
        dtype: dtype the merge is computed and saved in.

    Returns:
        The files written, relative to ``out_dir``.
    """
    adapter_dir = find_folder(checkpoint_dir, ADAPTER_CONFIG)
    merged = merge_lora(base_dir, adapter_dir, dtype)
    if is_reward_adapter(adapter_dir) and (adapter_dir / "tokenizer_config.json").is_file():
        # A sequence classifier scores the last non-pad token: it needs the pad id training used.
        from transformers import AutoTokenizer

        merged.config.pad_token_id = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False).pad_token_id
    _empty(out_dir)
    merged.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer([adapter_dir, checkpoint_dir, base_dir], out_dir)
    log.info("merged adapter %s into %s -> %s", adapter_dir.name, base_dir.name, out_dir)
    return _written(out_dir)


def export_adapter(checkpoint_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the peft adapter folder (config + safetensors weights, tokenizer if present)."""
    adapter_dir = find_folder(checkpoint_dir, ADAPTER_CONFIG)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FailedPrecondition("the adapter has no adapter_model.safetensors: only safetensors are exported")
    _empty(out_dir)
    for name in _ADAPTER_FILES:
        shutil.copy2(adapter_dir / name, out_dir / name)
    _copy_tokenizer([adapter_dir, checkpoint_dir], out_dir)
    return _written(out_dir)


def export_full(checkpoint_dir: Path, out_dir: Path) -> list[Path]:
    """Re-save a full fine-tune as a clean HF safetensors folder (optimizer/trainer state dropped)."""
    model_dir = find_folder(checkpoint_dir, MODEL_CONFIG)
    model = load_base(model_dir)
    _empty(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer([model_dir, checkpoint_dir], out_dir)
    return _written(out_dir)


def _empty(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInput.field_error("out_dir", f"{out_dir} is not empty: export into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)


def _written(out_dir: Path) -> list[Path]:
    files = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())
    if any(p.suffix in (".bin", ".pt", ".pth") for p in files):
        raise FailedPrecondition(f"export wrote pickle-based weights ({files}): only safetensors are allowed")
    return files
