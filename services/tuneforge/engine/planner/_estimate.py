"""Per-GPU memory estimate of a fine-tuning job (see the package docstring for the model)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from tuneforge.common.errors import FieldViolation, InvalidInput

GIB = 1024**3
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# DeepSpeed's estimators multiply host memory by this to cover pinned buffers and fragmentation.
HOST_BUFFER_FACTOR = 1.5
_QUANT_BLOCK = 64  # bitsandbytes 4-bit blocksize
_DOUBLE_QUANT_BLOCK = 256  # blocks per second-level constant with double quantization


class Method(enum.StrEnum):
    """What is trained: every weight, a LoRA adapter, or a LoRA adapter on quantized weights."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(enum.StrEnum):
    """Training precision; 16-bit means mixed precision with fp32 master weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Quantization(enum.StrEnum):
    """bitsandbytes storage of frozen linear weights under QLoRA."""

    NF4 = "nf4"
    FP4 = "fp4"
    INT8 = "int8"


@dataclass(frozen=True)
class _Arch:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    def linear_shapes(self) -> dict[str, tuple[int, int, bool]]:
        """(in_features, out_features, has_bias) of each linear module of one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (h, q, self.qkv_bias),
            "k_proj": (h, kv, self.qkv_bias),
            "v_proj": (h, kv, self.qkv_bias),
            "o_proj": (q, h, self.o_bias),
            "gate_proj": (h, i, self.mlp_bias),
            "up_proj": (h, i, self.mlp_bias),
            "down_proj": (i, h, self.mlp_bias),
        }


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model, split the way memory is accounted.

    Attributes:
        total: every parameter (tied embeddings counted once), equal to ``sum(p.numel())``.
        linear_weights: weights of the decoder layers' linear modules (what QLoRA quantizes).
        embedding: input embedding; ``lm_head``: output head (0 when tied).
        largest_layer: parameters of the largest single module (what ZeRO-3 gathers at once).
    """

    total: int
    linear_weights: int
    embedding: int
    lm_head: int
    largest_layer: int


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated memory of one training step, per GPU unless stated (bytes).

    Attributes:
        weights: parameters resident on the GPU (frozen and trainable).
        gradients: gradients resident on the GPU.
        optimizer: optimizer state resident on the GPU (master weights, moments, fp32 gradients).
        zero3_buffer: one gathered layer's weights and gradients (ZeRO-3 only).
        activations: saved activations, the loss's logits and their gradients at the peak.
        total: the sum, the figure to compare with the GPU's memory.
        host_per_node: host memory per node (model loading, offloaded states), DeepSpeed's way.
        params / trainable_params: parameter counts.
        notes: how each term was derived, for people reading the plan.
    """

    weights: int
    gradients: int
    optimizer: int
    zero3_buffer: int
    activations: int
    total: int
    host_per_node: int
    params: int
    trainable_params: int
    method: Method
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    gradient_checkpointing: bool
    micro_batch: int
    seq_len: int
    notes: tuple[str, ...] = ()
    objective: str = "sft"

    @property
    def model_states(self) -> int:
        """Weights, gradients, optimizer state and the ZeRO-3 buffer (DeepSpeed's "model states")."""
        return self.weights + self.gradients + self.optimizer + self.zero3_buffer

    def fits(self, gpu_memory_bytes: int, safety_margin: float = 0.1) -> bool:
        """Whether the plan fits a GPU of that size, keeping ``safety_margin`` of it free."""
        return self.total <= gpu_memory_bytes * (1.0 - safety_margin)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (enums as their values)."""
        out = asdict(self)
        out["method"] = self.method.value
        out["notes"] = list(self.notes)
        return out

    def summary(self) -> str:
        """One line in GiB, e.g. for logs."""
        parts = ("weights", "gradients", "optimizer", "zero3_buffer", "activations", "total")
        return ", ".join(f"{p} {getattr(self, p) / GIB:.2f} GiB" for p in parts)


def _cfg_dict(model_config: Any) -> dict[str, Any]:
    if isinstance(model_config, Mapping):
        return dict(model_config)
    if hasattr(model_config, "to_dict"):
        return model_config.to_dict()
    raise InvalidInput.field_error(
        "model_config", f"expected a transformers PretrainedConfig or a dict, got {type(model_config).__name__}"
    )


def _arch(model_config: Any) -> _Arch:
    cfg = _cfg_dict(model_config)
    model_type = cfg.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InvalidInput.field_error(
            "model_config.model_type",
            f"{model_type!r} is not supported by the memory planner; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [FieldViolation(f"model_config.{k}", "required, must be a positive integer") for k in required
               if not isinstance(cfg.get(k), int) or cfg[k] <= 0]
    if missing:
        raise InvalidInput.of(missing, what="model config")
    heads = cfg["num_attention_heads"]
    return _Arch(
        model_type=model_type,
        hidden=cfg["hidden_size"],
        intermediate=cfg["intermediate_size"],
        layers=cfg["num_hidden_layers"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        vocab=cfg["vocab_size"],
        # PretrainedConfig defaults to tied embeddings when the key is absent.
        tied=bool(cfg.get("tie_word_embeddings", True)),
        # Qwen2 hard-codes q/k/v biases; the others read attention_bias (which also covers o_proj).
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
        o_bias=model_type != "qwen2" and bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
    )


def _count(arch: _Arch) -> ParameterCount:
    per_layer_linear = sum(i * o for i, o, _ in arch.linear_shapes().values())
    per_layer_bias = sum(o for _, o, bias in arch.linear_shapes().values() if bias)
    per_layer_norms = 2 * arch.hidden + (2 * arch.head_dim if arch.qk_norm else 0)
    embedding = arch.vocab * arch.hidden
    lm_head = 0 if arch.tied else embedding
    total = (
        embedding + lm_head + arch.hidden  # final norm
        + arch.layers * (per_layer_linear + per_layer_bias + per_layer_norms)
    )
    largest_linear = max(i * o + (o if b else 0) for i, o, b in arch.linear_shapes().values())
    return ParameterCount(
        total=total,
        linear_weights=arch.layers * per_layer_linear,
        embedding=embedding,
        lm_head=lm_head,
        largest_layer=max(embedding, largest_linear),
    )


def count_parameters(model_config: Any) -> ParameterCount:
    """Count a model's parameters from its config alone.

    Args:
        model_config: a transformers ``PretrainedConfig`` or its ``to_dict()``.

    Returns:
        The counts; ``total`` equals ``sum(p.numel() for p in model.parameters())``.

    Raises:
        InvalidInput: unsupported ``model_type`` or missing sizes.
    """
    return _count(_arch(model_config))


def _lora_params(arch: _Arch, rank: int, targets: Sequence[str]) -> int:
    shapes = arch.linear_shapes()
    return arch.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def _quantized_bytes(n: int, quant: Quantization, double_quant: bool, out_rows: int) -> float:
    if quant is Quantization.INT8:
        return n * 1.0 + 4.0 * out_rows  # int8 weights + an fp32 scale per output row
    blocks = n / _QUANT_BLOCK
    # Double quantization: an 8-bit absmax per block plus an fp32 constant per 256 blocks.
    constants = blocks * (1.0 + 4.0 / _DOUBLE_QUANT_BLOCK) if double_quant else blocks * 4.0
    return n * 0.5 + constants


def _layer_activation_bytes(
    arch: _Arch, tokens: int, batch: int, seq: int, act: int, eager: bool, lora: tuple[int, Sequence[str], float]
) -> float:
    """Bytes autograd keeps for one decoder layer (``act``: bytes per activation element).

    RMSNorm (x2): the fp32 upcast of its input, the normalized output (compute dtype) and the
    fp32 rsqrt per token. Attention: rotated q and k and v (compute dtype), the attention output
    as SDPA keeps it plus its transposed copy feeding o_proj, SDPA's fp32 log-sum-exp; eager
    attention keeps the fp32 softmax and its compute-dtype copy instead (``a*s*s`` each). MLP: the
    gate and up outputs, silu(gate) and their product (``4 * s*b*intermediate``). LoRA (peft keeps
    adapters in fp32): the fp32 output of each adapter's A, and a fp32 copy of the adapter's input
    when the model is 16-bit (the cast) or dropout is on (the dropped copy, plus a 1-byte mask).
    """
    h, hq = arch.hidden, arch.heads * arch.head_dim
    kv = arch.kv_heads * arch.head_dim
    norms = 2 * (4 * tokens * h + act * tokens * h + 4 * tokens)
    qkv = act * tokens * (hq + 2 * kv)
    if eager:
        scores = arch.heads * batch * seq * seq * (4 + (act if act != 4 else 0))
        attn = scores + act * tokens * hq
    else:
        attn = 2 * act * tokens * hq + 4 * batch * arch.heads * seq
    mlp = 4 * act * tokens * arch.intermediate
    rank, targets, dropout = lora
    shapes = arch.linear_shapes()
    copy = 4 if (act != 4 or dropout > 0) else 0
    mask = 1 if dropout > 0 else 0
    adapters = sum(4 * tokens * rank + (copy + mask) * tokens * shapes[t][0] for t in targets)
    return norms + qkv + attn + mlp + adapters


def _loss_bytes(arch: _Arch, tokens: int, act: int) -> int:
    """Logits (held by the model output), the fp32 log-softmax the loss saves, and at the start of
    backward the fp32 gradients of both: ``(act + 12) * s*b*vocab`` bytes (measured: 16 in fp32,
    14.6 in bf16)."""
    return (act + 12) * tokens * arch.vocab


def _activation_bytes(arch: _Arch, seq: int, batch: int, act: int, checkpointing: bool, eager: bool,
                      lora: tuple[int, Sequence[str], float], logits: bool = True) -> int:
    """Peak of saved activations: everything the layers keep plus the larger of the loss's peak
    (at the start of backward) and, with checkpointing, one recomputed layer (later in backward,
    once the loss's tensors are freed). ``logits`` False: a one-score head (reward models) with no
    vocabulary-sized logits."""
    tokens = seq * batch
    layer = _layer_activation_bytes(arch, tokens, batch, seq, act, eager, lora)
    final_norm = 4 * tokens * arch.hidden + act * tokens * arch.hidden + 4 * tokens
    loss = _loss_bytes(arch, tokens, act) if logits else 0
    if checkpointing:
        # Each checkpointed layer keeps only its input.
        return int(arch.layers * act * tokens * arch.hidden + final_norm + max(loss, layer))
    return int(arch.layers * layer + final_norm + loss)


def _validate(method: Method, zero_stage: int, offload_optimizer: bool, offload_params: bool,
              seq_len: int, micro_batch: int, num_gpus: int, gpu_memory_bytes: int) -> None:
    problems = []
    if zero_stage not in (0, 1, 2, 3):
        problems.append(FieldViolation("zero_stage", f"{zero_stage} is not 0, 1, 2 or 3"))
    if offload_optimizer and zero_stage == 0:
        problems.append(FieldViolation("offload_optimizer", "needs ZeRO stage 1, 2 or 3: set zero_stage"))
    if offload_params and (zero_stage != 3 or not offload_optimizer):
        problems.append(FieldViolation(
            "offload_params", "needs ZeRO stage 3 with offload_optimizer: set zero_stage=3 and offload_optimizer"))
    for name, value in (("seq_len", seq_len), ("micro_batch", micro_batch), ("num_gpus", num_gpus),
                        ("gpu_memory_bytes", gpu_memory_bytes)):
        if value < 1:
            problems.append(FieldViolation(name, f"must be a positive integer, got {value}"))
    if problems:
        raise InvalidInput.of(problems, what="memory plan request")


def plan_memory(
    model_config: Any,
    method: Method | str,
    seq_len: int,
    micro_batch: int,
    num_gpus: int = 1,
    gpu_memory_bytes: int = 80 * GIB,
    zero_stage: int | None = None,
    *,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    gradient_checkpointing: bool = False,
    dtype: Precision | str = Precision.BF16,
    lora_r: int = 16,
    lora_targets: Sequence[str] = LINEAR_MODULES,
    lora_dropout: float = 0.0,
    quantization: Quantization | str = Quantization.NF4,
    double_quant: bool = True,
    attention: str = "sdpa",
    num_nodes: int = 1,
    objective: str = "sft",
) -> MemoryPlan:
    """Estimate the per-GPU memory of one training step (forward, backward, optimizer step).

    Args:
        model_config: a transformers ``PretrainedConfig`` or its dict (Llama family).
        method: ``full``, ``lora`` or ``qlora``.
        seq_len: tokens per sample (after packing, the packed length).
        micro_batch: samples per GPU per forward pass.
        num_gpus: data-parallel GPUs in total (ZeRO partitions over them).
        gpu_memory_bytes: memory of one GPU; only reported back, use ``MemoryPlan.fits``.
        zero_stage: DeepSpeed ZeRO stage 0-3; None means 0 (plain data parallel).
        offload_optimizer: optimizer state and gradients in host memory (stage 1-3).
        offload_params: weight partitions in host memory too (stage 3 with optimizer offload).
        gradient_checkpointing: recompute each decoder layer in backward.
        dtype: ``fp32`` or 16-bit mixed precision (``bf16``/``fp16``).
        lora_r, lora_targets, lora_dropout: adapter shape (LoRA/QLoRA).
        quantization, double_quant: QLoRA storage of the frozen linear weights.
        attention: ``sdpa`` (fused, the default) or ``eager`` (materializes the attention matrix).
        num_nodes: machines the GPUs are spread over (host memory is reported per node).
        objective: the training objective (the spec's ``objective.kind``). Preference objectives
            (dpo, orpo, simpo, reward_model) run chosen and rejected side by side: twice the sequences.
            A reward model has a one-score head instead of the LM head (no vocabulary logits; the
            head trains under LoRA too). dpo and kto keep a frozen reference: a weight copy under full
            fine-tuning (adapters disable the adapter instead), and its no-grad forwards' logits
            while the policy's activations are held.

    Returns:
        The plan; ``total`` is the estimated peak per GPU in bytes.

    Raises:
        InvalidInput: unknown method/dtype/targets, unsupported model, or inconsistent ZeRO options,
            every problem at once.
    """
    method, dtype, quantization = _parse_enums(method, dtype, quantization, lora_targets, attention)
    objective = _parse_objective(objective)
    stage = 0 if zero_stage is None else zero_stage
    _validate(method, stage, offload_optimizer, offload_params, seq_len, micro_batch, num_gpus, gpu_memory_bytes)
    arch = _arch(model_config)
    counts = _count(arch)
    reward_model = objective == "reward_model"
    if reward_model:  # AutoModelForSequenceClassification: the LM head becomes a (hidden x 1) score head
        counts = replace(counts, total=counts.total - counts.lm_head + arch.hidden, lm_head=0)
    sixteen = dtype is not Precision.FP32
    w, g, k = (2, 2, 16) if sixteen else (4, 4, 8)
    lora: tuple[int, tuple[str, ...], float]
    if method is Method.FULL:
        trainable, frozen_bytes, lora = counts.total, 0.0, (0, (), 0.0)
    else:
        trainable = _lora_params(arch, lora_r, lora_targets) + (arch.hidden if reward_model else 0)
        frozen_bytes = _frozen_bytes(arch, counts, method, w, quantization, double_quant)
        lora = (lora_r, tuple(lora_targets), lora_dropout)
    n = num_gpus
    opt_shard = 1 if stage == 0 else n  # ZeRO-1/2/3 partition the optimizer state
    weights = frozen_bytes + w * trainable
    with_reference = objective in _REFERENCE_OBJECTIVES
    if with_reference and method is Method.FULL:
        weights += w * counts.total  # the frozen reference copy
    if stage == 3:
        weights = 0.0 if offload_params else weights / n
    gradients = 0.0 if offload_optimizer or stage == 3 else g * trainable / (n if stage == 2 else 1)
    if stage == 3 and not sixteen and not offload_optimizer:
        gradients = g * trainable / n  # in fp32 the gradient partition is not inside the 16-byte term
    optimizer = 0.0 if offload_optimizer else k * trainable / opt_shard
    # ZeRO-3 gathers one module at a time: its weights, and its gradients when it is trained.
    gathered = (w + g if method is Method.FULL else w) * counts.largest_layer
    buffer = gathered if stage == 3 else 0
    act = 4 if not sixteen else 2
    sequences = micro_batch * (2 if objective in _PAIRED_OBJECTIVES else 1)
    activations = _activation_bytes(arch, seq_len, sequences, act, gradient_checkpointing,
                                    attention == "eager", lora, logits=not reward_model)
    if with_reference:  # reference (and KTO's KL) forwards without gradients: logits + fp32 log-softmax
        activations += (act + 4) * seq_len * sequences * arch.vocab
    total = int(weights) + int(gradients) + int(optimizer) + buffer + activations
    host = _host_bytes(counts, trainable, method, stage, offload_optimizer, offload_params, w, k, n, num_nodes)
    return MemoryPlan(
        weights=int(weights), gradients=int(gradients), optimizer=int(optimizer), zero3_buffer=buffer,
        activations=activations, total=total, host_per_node=host, params=counts.total,
        trainable_params=trainable, method=method, zero_stage=stage, offload_optimizer=offload_optimizer,
        offload_params=offload_params, gradient_checkpointing=gradient_checkpointing,
        micro_batch=micro_batch, seq_len=seq_len,
        notes=(f"{dtype.value}: {w} B weights, {g} B gradients, {k} B optimizer state per trainable parameter",
               f"activations at {act} B per element, attention={attention}",
               f"objective {objective}: {sequences} sequences per micro-batch"
               + (", frozen reference" if with_reference else "") + (", score head" if reward_model else "")),
        objective=objective,
    )


# Objectives whose rows hold two sequences (chosen and rejected), and those with a frozen reference.
_PAIRED_OBJECTIVES = frozenset({"dpo", "orpo", "simpo", "reward_model"})
_REFERENCE_OBJECTIVES = frozenset({"dpo", "kto"})


def _parse_objective(objective: Any) -> str:
    from tuneforge.engine.spec import ObjectiveKind

    value = getattr(objective, "value", objective)
    known = [k.value for k in ObjectiveKind]
    if value not in known:
        raise InvalidInput.of([FieldViolation("objective", f"{value!r} is not one of {', '.join(known)}")],
                              what="memory plan request")
    return str(value)


def _parse_enums(method: Any, dtype: Any, quantization: Any, targets: Sequence[str],
                 attention: str) -> tuple[Method, Precision, Quantization]:
    problems, parsed = [], []
    for name, enum_cls, value in (("method", Method, method), ("dtype", Precision, dtype),
                                  ("quantization", Quantization, quantization)):
        try:
            parsed.append(enum_cls(getattr(value, "value", value)))
        except ValueError:
            choices = ", ".join(m.value for m in enum_cls)
            problems.append(FieldViolation(name, f"{value!r} is not one of {choices}"))
    bad = [t for t in targets if t not in LINEAR_MODULES]
    if bad or not targets:
        problems.append(FieldViolation("lora_targets", f"{bad or 'empty'}: choose from {', '.join(LINEAR_MODULES)}"))
    if attention not in ("sdpa", "eager"):
        problems.append(FieldViolation("attention", f"{attention!r} is not 'sdpa' or 'eager'"))
    if problems:
        raise InvalidInput.of(problems, what="memory plan request")
    return cast(Method, parsed[0]), cast(Precision, parsed[1]), cast(Quantization, parsed[2])


def _frozen_bytes(arch: _Arch, counts: ParameterCount, method: Method, w: int,
                  quant: Quantization, double_quant: bool) -> float:
    """Storage of the frozen base model under LoRA (compute dtype) or QLoRA (quantized linears)."""
    if method is Method.LORA:
        return float(w * counts.total)
    rows = arch.layers * sum(o for _, o, _ in arch.linear_shapes().values())
    linear = _quantized_bytes(counts.linear_weights, quant, double_quant, rows)
    return linear + w * (counts.total - counts.linear_weights)


def _host_bytes(counts: ParameterCount, trainable: int, method: Method, stage: int, offload_optimizer: bool,
                offload_params: bool, w: int, k: int, n: int, nodes: int) -> int:
    """Host memory per node, as DeepSpeed's estimators count it: loading the model in fp32 in each
    process (only the largest layer under ZeRO-3's zero.Init) or the offloaded states, whichever is
    larger, times ``HOST_BUFFER_FACTOR``."""
    per_node = max(1, n // nodes)
    loaded = counts.largest_layer if stage == 3 else counts.total
    load = 4 * loaded * per_node
    offloaded = 0.0
    if offload_optimizer:
        offloaded = k * trainable / nodes
        if offload_params:
            offloaded += w * (counts.total if method is Method.FULL else trainable) / nodes
    if stage == 3 and offload_optimizer:
        # With zero.Init DeepSpeed does not take the max with the fp32 load.
        return int(offloaded * HOST_BUFFER_FACTOR)
    return int(max(load, offloaded) * HOST_BUFFER_FACTOR)
