"""Load a model for evaluation: safetensors only, no remote code, optional LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.common.errors import InvalidInput


@dataclass
class LoadedModel:
    """A causal LM (or a reward model: a sequence classifier with one output) in eval mode with its tokenizer."""

    model: Any
    tokenizer: Any
    max_length: int
    reward_model: bool = False

    @property
    def pad_id(self) -> int:
        """The padding id (EOS when the tokenizer has no pad token)."""
        tid = self.tokenizer.pad_token_id
        return int(tid if tid is not None else self.tokenizer.eos_token_id or 0)


def pick_device(prefer_gpu: bool = True) -> str:
    """``cuda`` when a GPU is visible and wanted, else ``cpu``."""
    import torch

    return "cuda" if prefer_gpu and torch.cuda.is_available() else "cpu"


def load_model(
    model_dir: Path, *, adapter_dir: Path | None = None, device: str = "cpu", dtype: str = "float32"
) -> LoadedModel:
    """Load a Hugging Face folder (and a PEFT adapter onto it) for evaluation.

    Args:
        model_dir: folder with ``config.json``, safetensors weights and a tokenizer.
        adapter_dir: a PEFT adapter folder (``adapter_config.json`` + safetensors), applied on top.
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Raises:
        InvalidInput: the folder does not hold a safetensors model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not any(model_dir.glob("*.safetensors")):
        raise InvalidInput.field_error(
            "model", f"{model_dir.name!r} holds no config.json + *.safetensors: give a safetensors model folder"
        )
    from tuneforge.engine.export import is_reward_adapter, is_sequence_classifier

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    # A reward model: a full sequence-classifier folder, or a reward model's LoRA (peft task SEQ_CLS).
    reward = is_sequence_classifier(model_dir) or (
        adapter_dir is not None and (Path(adapter_dir) / "adapter_config.json").is_file()
        and is_reward_adapter(Path(adapter_dir)))
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "use_safetensors": True, "trust_remote_code": False}
    if reward:
        model: Any = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        from tuneforge.engine.export import match_vocab, require_safetensors_adapter

        require_safetensors_adapter(Path(adapter_dir))
        if (Path(adapter_dir) / "tokenizer_config.json").is_file():
            # The tokenizer trained with the adapter (its pad token, any added tokens).
            tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False)
        match_vocab(model, Path(adapter_dir))
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    if reward and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    model.to(device).eval()
    max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return LoadedModel(model, tokenizer, max_length, reward_model=reward)
