"""AdamW with decoupled weight decay and the learning-rate schedules (linear, cosine, constant).

The schedule is a pure function of the optimizer step, so a resumed run that restores the step
count follows exactly the same learning-rate curve as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from tuneforge.engine.spec import LrScheduler as ScheduleKind


def lr_factor(kind: ScheduleKind, step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warmup rises linearly from 1/(warmup+1) to 1; then linear decays to 0 at ``total_steps``,
    cosine follows half a cosine wave to 0, constant stays at 1.
    """
    if step < warmup_steps:
        return float(step + 1) / float(warmup_steps + 1)
    if kind is ScheduleKind.CONSTANT:
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, float(step - warmup_steps) / decay_steps)
    if kind is ScheduleKind.LINEAR:
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases, norms and embeddings-like 1-D tensors are not regularised (GPT-2 / llm.c habit).
    # A ZeRO-3 parameter's local tensor is an empty 1-D partition: its real shape is ``ds_shape``.
    ndim = len(getattr(param, "ds_shape", param.shape))
    return ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float
) -> list[dict[str, object]]:
    """Split trainable parameters into a decayed and a non-decayed group (empty groups dropped)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    Raises:
        ValueError: when the model has no trainable parameter (a method that froze everything).
    """
    groups = param_groups(model.named_parameters(), weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters: check the method and target modules")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: ScheduleKind, *, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following ``lr_factor``; its state dict holds only numbers (weights_only safe)."""

    def factor(step: int) -> float:
        return lr_factor(kind, step, warmup_steps, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_curve(kind: ScheduleKind, peak_lr: float, warmup_steps: int, total_steps: int) -> list[float]:
    """The learning rate used at each optimizer step (what a scheduler yields), for checks and plots."""
    return [peak_lr * lr_factor(kind, s, warmup_steps, total_steps) for s in range(total_steps)]

