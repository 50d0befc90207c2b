"""Load the spec's base model and tokenizer and apply its fine-tuning method.

Public API:
    load_model_and_tokenizer(spec, *, device="cpu", hf_ds_config=None, model_dir=None, gguf_cache_dir=None)
        -> (model, tokenizer)
        - Hugging Face folder ``model_dir or spec.model.path``; ``trust_remote_code=False`` and
          ``use_safetensors=True`` always (a folder without .safetensors weights is refused).
        - Tokenizer: a ChatML template when it has none, pad made distinct from eos; embeddings are
          resized when that added tokens.
        - ``config.use_cache = False`` (training; also what lets packed position ids isolate samples).
        - ``hyperparameters.dropout`` overrides the config's dropout fields before the weights load.
        - Reward models (objective reward_model): ``AutoModelForSequenceClassification`` with
          ``num_labels=1``; LoRA uses peft's SEQ_CLS task, which trains and saves the score head in full.
        - Method: full (all trainable), lora / qlora (peft ``LoraConfig``; targets from
          ``models.targets``), prefix (``PrefixTuningConfig``), prompt (``PromptTuningConfig``).
          QLoRA loads through ``BitsAndBytesConfig`` (nf4/fp4 4-bit or int8), runs
          ``prepare_model_for_kbit_training`` and ``disable_bnb_cpu_repack``.
        - Gradient checkpointing (non-reentrant) when ``spec.gradient_checkpointing``.
        - ZeRO-3: the CALLER creates ``transformers.integrations.HfDeepSpeedConfig(ds_config)`` and keeps
          a reference to it before calling; ``from_pretrained`` then partitions weights as they load.
          Pass it as ``hf_ds_config`` so the model is not moved to ``device`` (DeepSpeed places it)
          and the embeddings are not resized under partitioning (a tokenizer that needs new tokens
          is refused then: fix the tokenizer folder first).
        - GGUF bases (``model.gguf_file``): converted once with ``models.gguf.convert_gguf`` into
          ``gguf_cache_dir`` (default ``$TMPDIR/tuneforge-gguf/<file stem>``, reused when complete),
          then loaded from there; or pass an already converted folder as ``model_dir``.
    disable_bnb_cpu_repack(model) -> int
        Sets ``support_avx512bf16_for_cpu = False`` on every bitsandbytes ``Linear4bit``: on CPUs with
        AVX512-BF16 a no-grad eval forward otherwise repacks the weights into an inference layout and
        LoRA gradients silently become None afterwards. Returns how many layers were fixed.
    trainable_parameter_names(model) -> list[str]: names of parameters with ``requires_grad``.
    resolve_model_dir(spec, gguf_cache_dir=None) -> Path: the folder that will be loaded.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, cast

from tuneforge.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneforge.engine.data.tokenize import ensure_chat_template, ensure_pad_token
from tuneforge.engine.models.targets import resolve_target_modules
from tuneforge.engine.spec import (
    ComputeDType,
    MethodKind,
    ModelDType,
    ObjectiveKind,
    Precision,
    QuantType,
    TrainingSpec,
)

log = logging.getLogger(__name__)

_DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "activation_dropout",
)


def trainable_parameter_names(model: Any) -> list[str]:
    """Names of the parameters that will be trained (``requires_grad``), in model order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def disable_bnb_cpu_repack(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference (the QLoRA-after-eval trap)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    fixed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            fixed += 1
    return fixed


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _load_dtype(spec: TrainingSpec) -> Any:
    # fp32 master weights by default: mixed precision comes from autocast in the runtime.
    if spec.model.dtype is ModelDType.AUTO:
        return _torch_dtype("float32")
    return _torch_dtype(spec.model.dtype.value)


def _quantization_config(spec: TrainingSpec) -> Any:
    from transformers import BitsAndBytesConfig

    q = spec.method.qlora
    if q.quant_type is QuantType.INT8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type.value,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=_torch_dtype(q.compute_dtype.value),
    )


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise NotFound(f"no Hugging Face model at {folder} (config.json missing); check model.path")
    if not any(folder.glob("*.safetensors")):
        raise FailedPrecondition(
            f"{folder} has no .safetensors weights; tuneforge loads safetensors only (pickled .bin "
            "weights can run code): convert them with safetensors first"
        )


def _config(folder: Path, spec: TrainingSpec) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if spec.hyperparameters.dropout is not None:
        for key in _DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float | int):
                setattr(config, key, spec.hyperparameters.dropout)
    config.use_cache = False
    return config


def is_reward_model(spec: TrainingSpec) -> bool:
    """Whether the spec trains a reward model (a sequence-classification head with one output)."""
    return spec.objective.kind is ObjectiveKind.REWARD_MODEL


def _load_base(folder: Path, spec: TrainingSpec, device: Any, zero3: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _config(folder, spec)
    auto: Any = AutoModelForCausalLM
    if is_reward_model(spec):
        # One scalar per sequence; the head is new (randomly initialised) unless the folder is
        # already a reward model.
        config.num_labels = 1
        auto = AutoModelForSequenceClassification
    kwargs: dict[str, Any] = {
        "config": config,
        "dtype": _load_dtype(spec),
        "use_safetensors": True,
        "trust_remote_code": False,
    }
    if spec.method.kind is MethodKind.QLORA:
        if zero3:
            raise InvalidInput.field_error("resources.zero_stage", "QLoRA cannot load under ZeRO-3; use 0-2")
        kwargs["quantization_config"] = _quantization_config(spec)
        kwargs["device_map"] = {"": str(device)}
    return auto.from_pretrained(folder, **kwargs)


def _peft_config(spec: TrainingSpec, model: Any, folder: Path) -> Any:
    import peft

    m = spec.method
    if m.kind in (MethodKind.LORA, MethodKind.QLORA):
        return peft.LoraConfig(
            r=m.lora.r,
            lora_alpha=cast(int, m.lora.alpha),  # peft scales by alpha / r and takes floats; its hint says int
            lora_dropout=m.lora.dropout,
            bias="none",
            target_modules=resolve_target_modules(m.lora.target_modules, model),
            # SEQ_CLS: peft trains (and saves) the score head in full beside the adapter.
            task_type="SEQ_CLS" if is_reward_model(spec) else "CAUSAL_LM",
        )
    if m.kind is MethodKind.PREFIX:
        return peft.PrefixTuningConfig(num_virtual_tokens=m.prefix.num_virtual_tokens, task_type="CAUSAL_LM")
    if m.prompt.init_text:
        return peft.PromptTuningConfig(
            num_virtual_tokens=m.prompt.num_virtual_tokens,
            task_type="CAUSAL_LM",
            prompt_tuning_init=peft.PromptTuningInit.TEXT,
            prompt_tuning_init_text=m.prompt.init_text,
            tokenizer_name_or_path=str(folder),
        )
    return peft.PromptTuningConfig(num_virtual_tokens=m.prompt.num_virtual_tokens, task_type="CAUSAL_LM")


def _apply_method(spec: TrainingSpec, model: Any, folder: Path) -> Any:
    import peft

    kind = spec.method.kind
    ckpt_kwargs = {"use_reentrant": False}
    if kind is MethodKind.QLORA:
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        if kind is not MethodKind.FULL:
            model.enable_input_require_grads()
    if kind is MethodKind.FULL:
        model.requires_grad_(True)
        return model
    model = peft.get_peft_model(model, _peft_config(spec, model, folder))
    if kind is MethodKind.QLORA:
        fixed = disable_bnb_cpu_repack(model)
        log.info("disabled bitsandbytes CPU repacking on %d Linear4bit layers", fixed)
    return model


def _check_compute_dtype(spec: TrainingSpec, device: Any) -> None:
    on_cpu = str(device).startswith("cpu")
    if (
        spec.method.kind is MethodKind.QLORA
        and on_cpu
        and spec.method.qlora.compute_dtype is ComputeDType.FLOAT16
    ):
        raise InvalidInput.field_error(
            "method.qlora.compute_dtype",
            "float16 compute is not supported by bitsandbytes on CPU; use bfloat16 or float32",
        )
    if spec.precision is Precision.FP16 and on_cpu:
        raise InvalidInput.field_error("precision", "fp16 needs a GPU; use bf16 or fp32 on CPU")


def resolve_model_dir(spec: TrainingSpec, gguf_cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder to load: ``model.path``, the converted folder of ``model.gguf_file``, or a
    registered model fetched from the store into this machine's cache (verified)."""
    m = spec.model
    if m.path is None and m.store_uri and m.manifest_key and m.manifest_sha256:
        from tuneforge.engine.models.registry import ModelRef, fetch_model

        return fetch_model(ModelRef(m.store_uri, m.manifest_key, m.manifest_sha256))
    if spec.model.path is None:
        raise FailedPrecondition(
            f"model.name {spec.model.name!r} is a reference the training service resolves to a local folder: "
            "set model.path to a Hugging Face folder when running the engine directly"
        )
    if not spec.model.gguf_file:
        return Path(spec.model.path)
    from tuneforge.engine.models.gguf import convert_gguf

    source = Path(spec.model.path) / spec.model.gguf_file
    cache = gguf_cache_dir or Path(tempfile.gettempdir()) / "tuneforge-gguf" / Path(spec.model.gguf_file).stem
    return convert_gguf(source, cache)


def load_model_and_tokenizer(
    spec: TrainingSpec,
    *,
    device: Any = "cpu",
    hf_ds_config: Any = None,
    model_dir: Path | None = None,
    gguf_cache_dir: Path | None = None,
) -> tuple[Any, Any]:
    """Load the base model and tokenizer and apply the spec's method (see the module docstring).

    Args:
        spec: the validated training spec.
        device: torch device (or its name) for the model; ignored under ZeRO-3.
        hf_ds_config: the caller's live ``HfDeepSpeedConfig`` when loading for ZeRO-3, else None.
        model_dir: a folder to load instead of ``spec.model.path`` (e.g. a converted GGUF).
        gguf_cache_dir: where a GGUF base is converted (see the module docstring).

    Returns:
        ``(model, tokenizer)``: the model in train mode with only the method's parameters trainable.

    Raises:
        NotFound / FailedPrecondition: missing folder or GGUF file, no safetensors weights.
        InvalidInput: target modules that do not exist, or a method the device cannot run.
    """
    from transformers import AutoTokenizer

    folder = Path(model_dir) if model_dir is not None else resolve_model_dir(spec, gguf_cache_dir)
    _check_folder(folder)
    _check_compute_dtype(spec, device)
    zero3 = hf_ds_config is not None
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    grew = ensure_chat_template(tokenizer)
    grew = ensure_pad_token(tokenizer) or grew
    if grew and zero3:
        raise FailedPrecondition(
            f"the tokenizer in {folder} needs new special tokens (pad or ChatML), which "
            "cannot be added under ZeRO-3; add them to the model folder first"
        )
    model = _load_base(folder, spec, device, zero3)
    if grew:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    if spec.method.kind is not MethodKind.FULL:
        model.requires_grad_(False)
    model = _apply_method(spec, model, folder)
    if not zero3 and spec.method.kind is not MethodKind.QLORA:
        model.to(device)
    model.train()
    return model, tokenizer
