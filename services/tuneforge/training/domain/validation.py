"""CreateJob validation: every problem at once, each naming the API field and the fix.

``request_violations`` checks the request alone (no I/O); ``dataset_kind_violations`` checks the
objective against the record kinds of the leased dataset versions; ``engine_field`` translates a
field path of the engine's spec (the second line of defence: ``load_spec`` at create time) back to
the API's field names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tuneforge.common.errors import FieldViolation
from tuneforge.training.domain.model import (
    Hyperparameters,
    JobSpec,
    Method,
    Objective,
    Precision,
    Resources,
    Schedule,
)

QUANT_TYPES = ("nf4", "fp4", "int8")
MAX_VIRTUAL_TOKENS = 512
_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_FV = FieldViolation


def request_violations(spec: JobSpec) -> list[FieldViolation]:
    """Every problem of a CreateJob request that can be seen without looking anything up."""
    out: list[FieldViolation] = []
    if not spec.base_model.strip():
        out.append(_FV("base_model", "is required: name a registered base model (e.g. 'smollm2-135m') or a "
                                     "full checkpoint id ('ckpt_...')"))
    if spec.method is Method.UNSPECIFIED:
        out.append(_FV("method", "is unspecified: choose METHOD_LORA, METHOD_QLORA, METHOD_FULL, "
                                 "METHOD_PREFIX or METHOD_PROMPT"))
    if spec.objective is Objective.UNSPECIFIED:
        out.append(_FV("objective", "is unspecified: choose OBJECTIVE_SFT, OBJECTIVE_DPO or OBJECTIVE_PRETRAIN"))
    out += _data_violations(spec)
    out += _hyper_violations(spec.hyperparameters, spec.method)
    out += _resource_violations(spec.resources, spec.hyperparameters, spec.method)
    out += _schedule_violations(spec.schedule)
    out += _metadata_violations(spec)
    return out


def _data_violations(spec: JobSpec) -> list[FieldViolation]:
    out = []
    if not spec.dataset_version_id and not spec.mixture:
        out.append(_FV("dataset_version_id", "no training data: set dataset_version_id (a curated dataset "
                                             "version) or a mixture of versions"))
    if spec.dataset_version_id and spec.mixture:
        out.append(_FV("mixture", "set dataset_version_id or mixture, not both"))
    for i, m in enumerate(spec.mixture):
        if not m.dataset_version_id:
            out.append(_FV(f"mixture[{i}].dataset_version_id", "is required: name the component's dataset version"))
        if not m.weight > 0:
            out.append(_FV(f"mixture[{i}].weight", f"is {m.weight}: weights must be > 0 (relative, e.g. 1.0)"))
    return out


def _hyper_violations(hp: Hyperparameters, method: Method) -> list[FieldViolation]:
    p = "hyperparameters."
    out = [_FV(p + name, f"is {value}: must be 0 (the default) or more")
           for name, value in (("warmup_steps", hp.warmup_steps), ("epochs", hp.epochs), ("max_steps", hp.max_steps),
                               ("micro_batch_size", hp.micro_batch_size), ("lora_r", hp.lora_r),
                               ("gradient_accumulation_steps", hp.gradient_accumulation_steps),
                               ("weight_decay", hp.weight_decay), ("max_grad_norm", hp.max_grad_norm),
                               ("lora_alpha", hp.lora_alpha), ("dpo_beta", hp.dpo_beta), ("seed", hp.seed))
           if value < 0]
    if not 0 <= hp.learning_rate <= 1:
        out.append(_FV(p + "learning_rate", f"is {hp.learning_rate}: use a value in (0, 1], e.g. 2e-4 (0 = default)"))
    if not 0 <= hp.warmup_ratio < 1:
        out.append(_FV(p + "warmup_ratio", f"is {hp.warmup_ratio}: use a share in [0, 1), e.g. 0.03"))
    if hp.warmup_steps > 0 and hp.warmup_ratio > 0:
        out.append(_FV(p + "warmup_ratio", "set warmup_steps or warmup_ratio, not both"))
    if hp.epochs > 0 and hp.max_steps > 0:
        out.append(_FV(p + "max_steps", "set epochs or max_steps, not both"))
    if hp.max_seq_length != 0 and not 8 <= hp.max_seq_length <= 131072:
        out.append(_FV(p + "max_seq_length", f"is {hp.max_seq_length}: use 8..131072 tokens (0 = default 1024)"))
    if not 0 <= hp.lora_dropout < 1:
        out.append(_FV(p + "lora_dropout", f"is {hp.lora_dropout}: use a probability in [0, 1)"))
    if hp.qlora_quant_type and hp.qlora_quant_type not in QUANT_TYPES:
        out.append(_FV(p + "qlora_quant_type", f"is {hp.qlora_quant_type!r}: use one of {', '.join(QUANT_TYPES)}"))
    if hp.qlora_quant_type and method not in (Method.QLORA, Method.UNSPECIFIED):
        out.append(_FV(p + "qlora_quant_type", "only applies to METHOD_QLORA: leave it empty"))
    if not 0 <= hp.num_virtual_tokens <= MAX_VIRTUAL_TOKENS:
        out.append(_FV(p + "num_virtual_tokens", f"is {hp.num_virtual_tokens}: use 1..{MAX_VIRTUAL_TOKENS} (0 = 16)"))
    if any(not m.strip() for m in hp.lora_target_modules):
        out.append(_FV(p + "lora_target_modules", "holds an empty name: list modules such as q_proj, v_proj"))
    return out


def _resource_violations(r: Resources, hp: Hyperparameters, method: Method) -> list[FieldViolation]:
    p = "resources."
    out = []
    if r.num_workers < 0:
        out.append(_FV(p + "num_workers", f"is {r.num_workers}: use 1 or more (0 = 1)"))
    if not 0 <= r.zero_stage <= 3:
        out.append(_FV(p + "zero_stage", f"is {r.zero_stage}: DeepSpeed ZeRO stages are 0 (plain DDP) to 3"))
    elif method is Method.QLORA and r.zero_stage == 3:
        out.append(_FV(p + "zero_stage", "QLoRA cannot partition quantized weights with ZeRO-3: use 0-2"))
    if r.offload_params and r.zero_stage != 3:
        out.append(_FV(p + "offload_params", "parameter offload needs ZeRO stage 3: set zero_stage 3 or "
                                             "offload_params false"))
    if r.offload_optimizer and r.zero_stage == 0:
        out.append(_FV(p + "offload_optimizer", "optimizer offload needs ZeRO stage 1-3: set zero_stage 2"))
    if r.max_failures < 0:
        out.append(_FV(p + "max_failures", f"is {r.max_failures}: use 0 or more (0 = default 3)"))
    if hp.precision is Precision.FP16 and not r.use_gpu:
        out.append(_FV("hyperparameters.precision", "fp16 needs a GPU: use PRECISION_BF16 or PRECISION_FP32, "
                                                    "or set resources.use_gpu"))
    return out


def _schedule_violations(s: Schedule) -> list[FieldViolation]:
    p = "schedule."
    out = [_FV(p + name, f"is {value}: must be 0 (the default) or more")
           for name, value in (("eval_every_steps", s.eval_every_steps), ("save_every_steps", s.save_every_steps),
                               ("early_stopping_patience", s.early_stopping_patience),
                               ("keep_best_n", s.keep_best_n), ("keep_latest_n", s.keep_latest_n))
           if value < 0]
    if s.early_stopping_patience > 0 and s.eval_every_steps <= 0:
        out.append(_FV(p + "early_stopping_patience", "needs periodic evaluation: set schedule.eval_every_steps"))
    return out


def _metadata_violations(spec: JobSpec) -> list[FieldViolation]:
    out = []
    if len(spec.suffix) > 64:
        out.append(_FV("suffix", f"is {len(spec.suffix)} characters long: use at most 64"))
    for key, value in spec.labels.items():
        if not _LABEL_KEY.match(key):
            out.append(_FV(f"labels[{key[:40]}]", "label keys are 1-63 lowercase letters, digits, '.', '_', '-'"))
        elif len(value) > 256:
            out.append(_FV(f"labels[{key}]", "label values are at most 256 characters"))
    return out


def dataset_kind_violations(spec: JobSpec, kinds: Mapping[str, str]) -> list[FieldViolation]:
    """The objective against the record kind of each version (``kinds``: version id -> kind name).

    DPO needs preference pairs (prompt, chosen, rejected); SFT and pre-training cannot use them.
    Versions of unknown kind ('') are not judged.
    """
    fields = {spec.dataset_version_id: "dataset_version_id",
              spec.validation_dataset_version_id: "validation_dataset_version_id"}
    fields |= {m.dataset_version_id: f"mixture[{i}].dataset_version_id" for i, m in enumerate(spec.mixture)}
    out = []
    for version_id, field in fields.items():
        kind = kinds.get(version_id, "")
        if not version_id or not kind:
            continue
        if spec.objective is Objective.DPO and kind != "PREFERENCE":
            out.append(_FV(field, f"dataset version {version_id!r} holds {kind.lower()} records, but OBJECTIVE_DPO "
                                  "needs preference pairs (prompt, chosen, rejected): use a preference dataset "
                                  "or OBJECTIVE_SFT"))
        elif spec.objective in (Objective.SFT, Objective.PRETRAIN) and kind == "PREFERENCE":
            out.append(_FV(field, f"dataset version {version_id!r} holds preference pairs: train them with "
                                  "OBJECTIVE_DPO, or use a chat/text dataset"))
    return out


# Engine spec paths -> API field names (longest prefix first wins).
_ENGINE_FIELDS = (
    ("method.lora.r", "hyperparameters.lora_r"), ("method.lora.alpha", "hyperparameters.lora_alpha"),
    ("method.lora.dropout", "hyperparameters.lora_dropout"),
    ("method.lora.target_modules", "hyperparameters.lora_target_modules"),
    ("method.qlora.quant_type", "hyperparameters.qlora_quant_type"),
    ("method.prefix.num_virtual_tokens", "hyperparameters.num_virtual_tokens"),
    ("method.prompt.num_virtual_tokens", "hyperparameters.num_virtual_tokens"),
    ("objective.dpo.beta", "hyperparameters.dpo_beta"), ("data.max_seq_length", "hyperparameters.max_seq_length"),
    ("data.packing", "hyperparameters.packing"), ("data.validation", "validation_dataset_version_id"),
    ("data.train", "dataset_version_id"), ("data.mixture", "mixture"), ("precision", "hyperparameters.precision"),
    ("gradient_checkpointing", "hyperparameters.gradient_checkpointing"), ("model", "base_model"),
    ("method", "method"), ("objective", "objective"), ("output", "base_model"),
)


def engine_field(path: str) -> str:
    """The API field for an engine spec field path (unchanged when both use the same name)."""
    for engine, api in _ENGINE_FIELDS:
        if path == engine or path.startswith((engine + ".", engine + "[")):
            if engine == "data.mixture":
                return api + path[len(engine):].split(".")[0]
            return api
    return path


# Engine remedies that name engine settings -> the same remedy in the API's terms.
_ENGINE_FIXES = (
    ("set data.validation or data.validation_split_ratio (e.g. 0.05)",
     "the training data has no validation split: set validation_dataset_version_id, curate the version with "
     "a split (SplitConfig.validation_ratio), or set schedule.eval_every_steps to 0"),
)


def engine_violation(field: str, description: str) -> FieldViolation:
    """An engine spec violation in the API's terms: its field and, where it names engine settings, its fix."""
    for engine, api in _ENGINE_FIXES:
        description = description.replace(engine, api)
    return FieldViolation(engine_field(field), description)
