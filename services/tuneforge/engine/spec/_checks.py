"""Cross-field checks of a training spec (internal: import from ``tuneforge.engine.spec``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tuneforge.common.errors import FieldViolation
from tuneforge.engine.spec._sections import (
    _SECTIONS,
    ADAPTER_METHODS,
    LABELLED_OBJECTIVES,
    ONLINE_RL_OBJECTIVES,
    PREFERENCE_OBJECTIVES,
    DataSection,
    DpoReference,
    MethodKind,
    MethodSection,
    ObjectiveKind,
    ObjectiveSection,
    Precision,
    ResourcesSection,
    ScheduleSection,
    TrainingSpec,
)

# --------------------------------------------------------------------------- cross-field checks

_Sections = Mapping[str, Any]


def _check_precision(s: _Sections) -> list[FieldViolation]:
    if s["precision"] is Precision.FP16 and not s["resources"].use_gpu:
        return [
            FieldViolation(
                "precision",
                "fp16 needs a GPU (no fp16 autocast/grad scaling on CPU); "
                "use bf16 or fp32, or set resources.use_gpu: true",
            )
        ]
    return []


def _check_zero(s: _Sections) -> list[FieldViolation]:
    r: ResourcesSection = s["resources"]
    out = []
    if r.offload_params and r.zero_stage != 3:
        out.append(
            FieldViolation(
                "resources.offload_params",
                "parameter offload needs ZeRO stage 3; set resources.zero_stage: 3 or offload_params: false",
            )
        )
    if r.offload_optimizer and r.zero_stage == 0:
        out.append(
            FieldViolation(
                "resources.offload_optimizer",
                "optimizer offload needs ZeRO stage 1-3; set resources.zero_stage: 2",
            )
        )
    return out


def _check_method(s: _Sections) -> list[FieldViolation]:
    m: MethodSection = s["method"]
    out = []
    if m.kind in (MethodKind.LORA, MethodKind.QLORA) and m.lora.target_modules == []:
        out.append(
            FieldViolation(
                "method.lora.target_modules",
                "is empty: LoRA/QLoRA need modules to adapt; "
                "omit it for the architecture's default or list e.g. [q_proj, v_proj]",
            )
        )
    if m.kind is MethodKind.QLORA and s["resources"].zero_stage == 3:
        out.append(
            FieldViolation(
                "resources.zero_stage",
                "QLoRA does not support ZeRO-3 here (quantized "
                "weights cannot be partitioned); use zero_stage 0-2",
            )
        )
    return out


def _check_objective(s: _Sections) -> list[FieldViolation]:
    o: ObjectiveSection = s["objective"]
    d: DataSection = s["data"]
    out = []
    if o.kind in PREFERENCE_OBJECTIVES:
        name = o.kind.name
        if d.packing:
            out.append(
                FieldViolation(
                    "data.packing", f"{name} needs chosen/rejected pairs side by side; set data.packing: false"
                )
            )
        if d.mixture:
            out.append(FieldViolation("data.mixture", f"{name} needs one preference dataset; use data.train"))
    if o.kind in LABELLED_OBJECTIVES:
        if d.packing:
            out.append(FieldViolation("data.packing", "KTO scores each completion on its own (and against "
                                      "another prompt for the KL estimate); set data.packing: false"))
        if d.mixture:
            out.append(FieldViolation("data.mixture", "KTO needs one labelled-completion dataset; use data.train"))
    if o.kind is ObjectiveKind.REWARD_MODEL and s["method"].kind in (MethodKind.PREFIX, MethodKind.PROMPT):
        out.append(FieldViolation("method.kind", f"a reward model trains its score head, which "
                                  f"{s['method'].kind.value} tuning leaves frozen; use lora, qlora or full"))
    kto_adapter_ref = o.kto.reference is DpoReference.ADAPTER_DISABLED
    if o.kind is ObjectiveKind.KTO and kto_adapter_ref and s["method"].kind not in ADAPTER_METHODS:
        out.append(FieldViolation("objective.kto.reference", "adapter_disabled needs an adapter method "
                                  "(lora, qlora, prefix, prompt); use model_copy for full fine-tuning"))
    adapter_ref = o.dpo.reference is DpoReference.ADAPTER_DISABLED
    if o.kind is ObjectiveKind.DPO and adapter_ref and s["method"].kind not in ADAPTER_METHODS:
        out.append(
            FieldViolation(
                "objective.dpo.reference",
                "adapter_disabled needs an adapter method "
                "(lora, qlora, prefix, prompt); use model_copy for full fine-tuning",
            )
        )
    return out


def _check_online_rl(s: _Sections) -> list[FieldViolation]:
    o: ObjectiveSection = s["objective"]
    d: DataSection = s["data"]
    if o.kind not in ONLINE_RL_OBJECTIVES:
        return []
    name, rl, out = o.kind.name, o.rl, []
    if not rl.rewards and rl.reward_model is None and rl.reward_model_path is None:
        out.append(FieldViolation("objective.rl.rewards", f"{name} needs a reward: name built-in reward "
                                  "functions (exact_match, contains_answer, regex, length, json_valid) and/or "
                                  "a reward model (objective.rl.reward_model)"))
    if rl.reward_model is not None and rl.reward_model_path is not None:
        out.append(FieldViolation("objective.rl.reward_model_path", _not_both_text("reward_model",
                                                                                   "reward_model_path")))
    if rl.reward_model_adapter_path is not None and rl.reward_model_path is None:
        out.append(FieldViolation("objective.rl.reward_model_adapter_path", "an adapter needs its base: set "
                                  "objective.rl.reward_model_path too"))
    if o.kind is ObjectiveKind.PPO and s["method"].kind is not MethodKind.FULL:
        out.append(FieldViolation("method.kind", "PPO trains a value head beside the policy and saves both in "
                                  "full checkpoints; use method full (or GRPO/RLOO, which need no value model, "
                                  "with adapters)"))
    if d.packing:
        out.append(FieldViolation("data.packing", f"{name} generates completions per prompt; set data.packing: "
                                  "false"))
    if d.mixture:
        out.append(FieldViolation("data.mixture", f"{name} reads one prompt dataset; use data.train"))
    if d.has_validation:
        field = "data.validation" if d.validation is not None else "data.validation_split_ratio"
        out.append(FieldViolation(field, f"{name} has no validation loss (rewards are reported per step); "
                                  "leave the validation data unset"))
    return out


def _not_both_text(a: str, b: str) -> str:
    return f"set {a} or {b}, not both"


def _check_eval_data(s: _Sections) -> list[FieldViolation]:
    if s["schedule"].eval_every_steps is not None and not s["data"].has_validation:
        return [
            FieldViolation(
                "schedule.eval_every_steps",
                "needs validation data; set data.validation (or data.validation_split_ratio, e.g. 0.05), "
                "or leave schedule.eval_every_steps unset",
            )
        ]
    return []


def _check_schedule(s: _Sections) -> list[FieldViolation]:
    sch: ScheduleSection = s["schedule"]
    out = []
    if sch.early_stopping_patience is not None and sch.eval_every_steps is None:
        out.append(
            FieldViolation(
                "schedule.early_stopping_patience", "needs evaluation; set schedule.eval_every_steps"
            )
        )
    if sch.best_metric.endswith("loss") and sch.greater_is_better:
        out.append(
            FieldViolation(
                "schedule.greater_is_better",
                f"{sch.best_metric} is better when lower; "
                "set greater_is_better: false (true would keep the worst checkpoints)",
            )
        )
    return out


def _check_sequence(s: _Sections) -> list[FieldViolation]:
    m: MethodSection = s["method"]
    d: DataSection = s["data"]
    virtual = {MethodKind.PREFIX: m.prefix.num_virtual_tokens, MethodKind.PROMPT: m.prompt.num_virtual_tokens}
    out = []
    n = virtual.get(m.kind, 0)
    if n and n >= d.max_seq_length:
        out.append(
            FieldViolation(
                f"method.{m.kind.value}.num_virtual_tokens",
                f"must be smaller than data.max_seq_length ({d.max_seq_length})",
            )
        )
    if m.kind in virtual and d.packing:
        # Virtual tokens (prompt) or a key/value prefix (prefix: a cache) defeat the packed-sequence
        # detection of transformers, so packed samples would attend to each other.
        out.append(
            FieldViolation(
                "data.packing",
                f"{m.kind.value} tuning adds virtual tokens to every row, so packed samples would "
                "attend to each other; set data.packing: false",
            )
        )
    return out


_CHECKS: tuple[tuple[tuple[str, ...], Callable[[_Sections], list[FieldViolation]]], ...] = (
    (("precision", "resources"), _check_precision),
    (("resources",), _check_zero),
    (("method", "resources"), _check_method),
    (("objective", "data", "method"), _check_objective),
    (("objective", "data", "method"), _check_online_rl),
    (("schedule", "data"), _check_eval_data),
    (("schedule",), _check_schedule),
    (("method", "data"), _check_sequence),
)


def cross_field_violations(sections: _Sections) -> list[FieldViolation]:
    """Problems between fields of different sections; checks whose sections are invalid are skipped.

    Args:
        sections: validated section objects by top-level name (missing ones use their defaults).
    """
    filled = dict(sections)
    for name, cls in _SECTIONS.items():
        if name not in filled and not TrainingSpec.model_fields[name].is_required():
            filled[name] = cls()
    filled.setdefault("precision", Precision.FP32)
    out: list[FieldViolation] = []
    for needs, check in _CHECKS:
        if all(n in filled for n in needs):
            try:
                out.extend(check(filled))
            except AttributeError:  # a partial section lacks a required field: nothing to compare
                continue
    return out
