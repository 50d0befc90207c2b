"""A CreateJob request -> the engine's training spec, with the defaults the proto documents.

``with_defaults`` fills every zero value with its documented default (what GetJob shows as the
resolved hyperparameters); ``engine_spec`` turns a resolved ``JobSpec`` plus the job's local inputs
into the mapping ``tuneforge.engine.spec.load_spec`` validates. Defaults:

- learning_rate 2e-4 for adapters, 2e-5 for full; lr_scheduler linear; epochs 1 unless max_steps;
  micro_batch_size 4; gradient_accumulation_steps 1; max_grad_norm 1.0 (a zero value means the
  default, so clipping cannot be switched off through the API); max_seq_length 1024;
- lora_r 16, lora_alpha 2 * r, target modules per architecture; dpo_beta 0.1; qlora nf4;
  num_virtual_tokens 16; precision fp32 on CPU, bf16 with use_gpu;
- num_workers 1; max_failures 3; keep_best_n 2; keep_latest_n 1; best_metric eval_loss; evaluation
  and checkpoints only at the end unless eval_every_steps / save_every_steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuneforge.training.domain.model import (
    Hyperparameters,
    JobSpec,
    LrScheduler,
    Method,
    Objective,
    Precision,
    Resources,
    Schedule,
)

ADAPTER_LR, FULL_LR = 2e-4, 2e-5


def with_defaults(spec: JobSpec) -> JobSpec:
    """The spec with every zero value replaced by its documented default."""
    hp, res, sch = spec.hyperparameters, spec.resources, spec.schedule
    r = hp.lora_r or 16
    hp = replace(
        hp,
        learning_rate=hp.learning_rate or (FULL_LR if spec.method is Method.FULL else ADAPTER_LR),
        lr_scheduler=hp.lr_scheduler if hp.lr_scheduler is not LrScheduler.UNSPECIFIED else LrScheduler.LINEAR,
        epochs=hp.epochs or (0 if hp.max_steps else 1),
        micro_batch_size=hp.micro_batch_size or 4,
        gradient_accumulation_steps=hp.gradient_accumulation_steps or 1,
        max_grad_norm=hp.max_grad_norm or 1.0,
        max_seq_length=hp.max_seq_length or 1024,
        lora_r=r,
        lora_alpha=hp.lora_alpha or 2.0 * r,
        dpo_beta=hp.dpo_beta or 0.1,
        precision=hp.precision if hp.precision is not Precision.UNSPECIFIED else (
            Precision.BF16 if res.use_gpu else Precision.FP32),
        qlora_quant_type=hp.qlora_quant_type or ("nf4" if spec.method is Method.QLORA else ""),
        num_virtual_tokens=hp.num_virtual_tokens or 16,
    )
    res = replace(res, num_workers=res.num_workers or 1, max_failures=res.max_failures or 3)
    sch = replace(sch, keep_best_n=sch.keep_best_n or 2, keep_latest_n=sch.keep_latest_n or 1,
                  best_metric=sch.best_metric or "eval_loss")
    return replace(spec, hyperparameters=hp, resources=res, schedule=sch)


@dataclass(frozen=True)
class DataFiles:
    """The job's data as local JSONL files (written from the leased dataset versions).

    ``mixture`` pairs each component's file with its weight and task, in request order.
    """

    train: Path | None = None
    validation: Path | None = None
    mixture: tuple[tuple[Path, float, str], ...] = ()


@dataclass(frozen=True)
class Output:
    """Where the engine writes checkpoints: the tenant's checkpoint area of the shared store."""

    store_uri: str
    prefix: str
    run_name: str


def engine_spec(spec: JobSpec, *, tenant: str, model_path: Path, data: DataFiles, output: Output,
                ray_address: str = "") -> dict[str, Any]:
    """The engine spec mapping for a resolved spec (see ``with_defaults``)."""
    hp = spec.hyperparameters
    return {
        "tenant": tenant,
        "precision": hp.precision.name.lower(),
        "gradient_checkpointing": hp.gradient_checkpointing,
        "model": {"path": str(model_path)},
        "data": _data(data, hp),
        "method": _method(spec.method, hp),
        "objective": _objective(spec.objective, hp),
        "hyperparameters": _hyper(hp),
        "resources": _resources(spec.resources, ray_address),
        "schedule": _schedule(spec.schedule),
        "output": {"checkpoint_uri": output.store_uri, "checkpoint_prefix": output.prefix,
                   "run_name": output.run_name},
    }


def _data(data: DataFiles, hp: Hyperparameters) -> dict[str, Any]:
    out: dict[str, Any] = {"max_seq_length": hp.max_seq_length, "packing": hp.packing}
    if data.mixture:
        out["mixture"] = [{"source": {"path": str(p)}, "weight": w, **({"task": t} if t else {})}
                          for p, w, t in data.mixture]
    elif data.train is not None:
        out["train"] = {"path": str(data.train)}
    if data.validation is not None:
        out["validation"] = {"path": str(data.validation)}
    return out


def _method(method: Method, hp: Hyperparameters) -> dict[str, Any]:
    kind = method.name.lower() if method is not Method.UNSPECIFIED else "lora"
    out: dict[str, Any] = {"kind": kind}
    if method in (Method.LORA, Method.QLORA):
        out["lora"] = {"r": hp.lora_r, "alpha": hp.lora_alpha, "dropout": hp.lora_dropout,
                       "target_modules": list(hp.lora_target_modules) or None}
    if method is Method.QLORA:
        out["qlora"] = {"quant_type": hp.qlora_quant_type}
    if method in (Method.PREFIX, Method.PROMPT):
        out[kind] = {"num_virtual_tokens": hp.num_virtual_tokens}
    return out


def _objective(objective: Objective, hp: Hyperparameters) -> dict[str, Any]:
    kind = objective.name.lower() if objective is not Objective.UNSPECIFIED else "sft"
    return {"kind": kind, "dpo": {"beta": hp.dpo_beta}} if objective is Objective.DPO else {"kind": kind}


def _hyper(hp: Hyperparameters) -> dict[str, Any]:
    out: dict[str, Any] = {
        "learning_rate": hp.learning_rate, "lr_scheduler": hp.lr_scheduler.name.lower(),
        "micro_batch_size": hp.micro_batch_size, "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "weight_decay": hp.weight_decay, "max_grad_norm": hp.max_grad_norm, "seed": hp.seed,
    }
    out |= {"max_steps": hp.max_steps} if hp.max_steps else {"epochs": hp.epochs or 1}
    out |= {"warmup_ratio": hp.warmup_ratio} if hp.warmup_ratio else {"warmup_steps": hp.warmup_steps}
    return out


def _resources(r: Resources, ray_address: str) -> dict[str, Any]:
    return {"num_workers": r.num_workers, "use_gpu": r.use_gpu, "zero_stage": r.zero_stage,
            "offload_optimizer": r.offload_optimizer, "offload_params": r.offload_params,
            "max_failures": r.max_failures, "ray_address": ray_address or None}


def _schedule(s: Schedule) -> dict[str, Any]:
    return {"eval_every_steps": s.eval_every_steps or None, "save_every_steps": s.save_every_steps or None,
            "early_stopping_patience": s.early_stopping_patience or None, "keep_best_n": s.keep_best_n,
            "keep_latest_n": s.keep_latest_n, "best_metric": s.best_metric}
