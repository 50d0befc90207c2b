"""Setup pieces the recipes share: model, data, runtime, checkpoints (internal: may change).

Each recipe still reads top to bottom (setup, train loop, save, cleanup); these helpers only keep
the three of them from repeating the same twenty lines.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from tuneforge.engine.data.records import Record
from tuneforge.engine.data.sampling import mix, split_indices
from tuneforge.engine.data.sources import read_source
from tuneforge.engine.spec import TrainingSpec
from tuneforge.engine.train.checkpoint import CheckpointManager
from tuneforge.engine.train.loop import LoopConfig
from tuneforge.engine.train.optim import build_optimizer, build_scheduler
from tuneforge.engine.train.position import StepPlan
from tuneforge.engine.train.runtime import LocalRuntime, Runtime, distributed_world

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model init, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def device_for(spec: TrainingSpec) -> torch.device:
    """This worker's device: its CUDA device when the spec asks for GPUs, else the CPU."""
    if spec.resources.use_gpu:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_model(
    spec: TrainingSpec, device: torch.device, hf_ds_config: Any = None
) -> tuple[torch.nn.Module, Any]:
    """The base model with the spec's method applied (adapter, quantization), and its tokenizer.

    Args:
        spec: the training spec.
        device: where the model goes (DeepSpeed places it itself under ZeRO-3).
        hf_ds_config: the live ``HfDeepSpeedConfig`` from ``zero3_context`` (ZeRO-3), else None.
    """
    from tuneforge.engine.models import load_model_and_tokenizer

    return load_model_and_tokenizer(spec, device=device, hf_ds_config=hf_ds_config)


def read_splits(spec: TrainingSpec) -> tuple[list[Record], list[Record]]:
    """Training and validation records (a validation split cut off with a fixed seed if asked)."""
    data = spec.data
    train = read_source(data.train, "train") if data.train else []
    val = read_source(data.validation, "validation") if data.validation else []
    if data.validation_split_ratio:
        train_idx, val_idx = split_indices(len(train), data.validation_split_ratio, spec.hyperparameters.seed)
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
    return train, val


def step_plan(spec: TrainingSpec, num_rows: int) -> StepPlan:
    """How rows map to optimizer steps on this world."""
    _rank, world = distributed_world()
    hp = spec.hyperparameters
    plan = StepPlan(num_rows, hp.micro_batch_size, hp.gradient_accumulation_steps, world, hp.seed)
    plan.check()
    return plan


def total_and_warmup(spec: TrainingSpec, plan: StepPlan) -> tuple[int, int]:
    """Optimizer steps to run and warmup steps (from warmup_steps or warmup_ratio)."""
    hp = spec.hyperparameters
    total = hp.max_steps or (hp.epochs or 1) * plan.steps_per_epoch
    warmup = hp.warmup_steps if hp.warmup_steps is not None else math.ceil((hp.warmup_ratio or 0.0) * total)
    return total, min(warmup, total)


def loop_config(spec: TrainingSpec, total_steps: int) -> LoopConfig:
    """The loop's cadence from the spec's schedule section."""
    sch = spec.schedule
    return LoopConfig(
        total_steps=total_steps,
        eval_every=sch.eval_every_steps or 0,
        checkpoint_every=sch.save_every_steps or 0,
        early_stopping_patience=sch.early_stopping_patience or 0,
        best_metric=sch.best_metric,
        greater_is_better=sch.greater_is_better,
    )


def build_runtime(
    spec: TrainingSpec, model: torch.nn.Module, device: torch.device, total: int, warmup: int
) -> Runtime:
    """Plain torch (one worker or DDP) at ZeRO stage 0, DeepSpeed at stages 1-3."""
    hp = spec.hyperparameters
    if spec.resources.zero_stage > 0 and spec.resources.num_workers > 1:
        from tuneforge.engine.train.ds_runtime import DeepSpeedRuntime

        return DeepSpeedRuntime(model, spec, device=device, total_steps=total, warmup_steps=warmup)
    optimizer = build_optimizer(model, learning_rate=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = build_scheduler(optimizer, spec.hyperparameters.lr_scheduler, warmup_steps=warmup, total_steps=total)
    return LocalRuntime(
        model, optimizer, scheduler, precision=spec.precision, max_grad_norm=hp.max_grad_norm or 0.0, device=device
    )


def checkpoint_manager(spec: TrainingSpec, tokenizer: Any) -> CheckpointManager:
    """Checkpoints under ``output.checkpoint_uri/<run_name>/``; the tokenizer is saved with the model."""
    return CheckpointManager(
        spec.output.checkpoint_uri,
        spec.output.run_name,
        key_prefix=spec.output.checkpoint_prefix,
        keep_best=spec.schedule.keep_best_n,
        keep_latest=spec.schedule.keep_latest_n,
        spec=spec.resolved_dict(),
        save_extra=tokenizer.save_pretrained,
    )


@dataclass
class Setup:
    """What every recipe builds before its loop."""

    spec: TrainingSpec
    device: torch.device
    model: torch.nn.Module
    tokenizer: Any
    train_records: list[Record]
    val_records: list[Record]


def read_mixture(spec: TrainingSpec) -> list[Record]:
    """A weighted multi-task mixture (engine-core's seeded ``mix``), each record tagged with its task."""
    sources = []
    for i, comp in enumerate(spec.data.mixture):
        records = read_source(comp.source, f"mixture[{i}]")
        if comp.task is not None:
            records = [replace(r, task=comp.task) for r in records]
        sources.append((records, comp.weight))
    return mix(sources, spec.hyperparameters.seed)


def example_row(ex: Any) -> dict[str, Any]:
    """An engine-core ``Example`` as the loop's row dict."""
    return {"input_ids": ex.input_ids, "labels": ex.labels, "position_ids": ex.position_ids, "rows": ex.rows}


def pair_row(pair: Any) -> dict[str, Any]:
    """An engine-core ``PreferencePair`` as the DPO objective's row dict."""
    return {
        "chosen_input_ids": pair.chosen.input_ids, "chosen_labels": pair.chosen.labels,
        "rejected_input_ids": pair.rejected.input_ids, "rejected_labels": pair.rejected.labels,
        "rows": (pair.row,),
    }


def zero3_context(spec: TrainingSpec) -> Any:
    """For ZeRO-3 over several workers, an ``HfDeepSpeedConfig`` that makes ``from_pretrained``
    partition weights as they load; the caller must keep the returned object alive. None otherwise."""
    if spec.resources.zero_stage != 3 or spec.resources.num_workers < 2:
        return None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from tuneforge.engine.train.ds_runtime import deepspeed_config

    # DeepSpeed reads the world size from its own comm layer: join the process group Ray made.
    deepspeed.init_distributed(dist_backend="nccl" if spec.resources.use_gpu else "gloo")

    from transformers import AutoConfig

    from tuneforge.engine.models import resolve_model_dir

    hidden = getattr(AutoConfig.from_pretrained(resolve_model_dir(spec), trust_remote_code=False), "hidden_size", None)
    _rank, world = distributed_world()
    return HfDeepSpeedConfig(deepspeed_config(spec, world, hidden))


def maybe_pack(spec: TrainingSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pack rows up to ``max_seq_length`` when ``data.packing`` is on (engine-core's packer)."""
    if not spec.data.packing:
        return rows
    from tuneforge.engine.data import packing

    return packing.pack_rows(rows, max_len=spec.data.max_seq_length, seed=spec.hyperparameters.seed)


def collator(spec: TrainingSpec, tokenizer: Any) -> Any:
    """engine-core's collator: right padding, packed rows without attention mask (block-diagonal)."""
    from tuneforge.engine.data.collate import make_collator

    return make_collator(tokenizer, packing=spec.data.packing)


def result(outcome: Any) -> Any:
    """The loop's outcome as the engine's ``TrainingResult``."""
    from tuneforge.engine.train.events import TrainingResult

    return TrainingResult(
        status=outcome.status,
        steps=outcome.state.global_step,
        metrics=dict(outcome.state.metrics),
        last_checkpoint_uri=outcome.last_checkpoint_uri,
        best_checkpoint_uri=outcome.best_checkpoint_uri,
        resumed_from_uri=outcome.resumed_from_uri,
    )
