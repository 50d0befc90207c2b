"""The cheapest setup that fits: method, ZeRO stage, offload, checkpointing and micro-batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import ResourceExhausted
from tuneforge.engine.planner._estimate import GIB, MemoryPlan, Method, plan_memory


@dataclass(frozen=True)
class Recommendation:
    """The cheapest setup that fits, its plan, and why the cheaper ones were rejected."""

    plan: MemoryPlan
    reasons: tuple[str, ...] = field(default_factory=tuple)


_LADDER = (
    # (zero stage, offload optimizer, offload params, gradient checkpointing), cheapest first:
    # partitioning costs little communication; recomputation costs ~1/3 more compute; offload
    # moves the optimizer step to the CPU and is the slowest.
    (0, False, False, False), (1, False, False, False), (2, False, False, False), (3, False, False, False),
    (0, False, False, True), (1, False, False, True), (2, False, False, True), (3, False, False, True),
    (2, True, False, True), (3, True, False, True), (3, True, True, True),
)


def recommend(
    model_config: Any,
    seq_len: int,
    num_gpus: int,
    gpu_memory_bytes: int,
    *,
    methods: Sequence[Method | str] = (Method.FULL, Method.LORA, Method.QLORA),
    max_micro_batch: int = 64,
    safety_margin: float = 0.1,
    **plan_kwargs: Any,
) -> Recommendation:
    """Pick the method, ZeRO stage, offload and the largest micro-batch that fit.

    Methods are tried in the given order (best quality first); for each, setups from cheapest to
    most expensive (see ``_LADDER``; ZeRO stages 1-3 without offload are skipped on one GPU, where
    they save nothing). The first setup where micro-batch 1 fits wins, with the largest power-of-two
    micro-batch up to ``max_micro_batch`` that fits.

    Args:
        model_config: a transformers ``PretrainedConfig`` or its dict.
        seq_len: tokens per sample.
        num_gpus: data-parallel GPUs.
        gpu_memory_bytes: memory of one GPU.
        methods: candidate methods, preferred first.
        max_micro_batch: upper bound of the micro-batch search.
        safety_margin: share of GPU memory kept free (CUDA context, fragmentation).
        **plan_kwargs: passed to ``plan_memory`` (dtype, lora_r, ...).

    Returns:
        The recommended plan and the reasons (rejected setups with their needs).

    Raises:
        ResourceExhausted: nothing fits, naming the smallest need.
    """
    usable = gpu_memory_bytes * (1.0 - safety_margin)
    reasons: list[str] = []
    smallest: MemoryPlan | None = None
    for method in methods:
        for stage, off_opt, off_par, ckpt in _LADDER:
            if num_gpus == 1 and stage in (1, 2, 3) and not off_opt:
                continue
            plan = _plan(model_config, method, seq_len, 1, num_gpus, gpu_memory_bytes, stage, off_opt, off_par,
                         ckpt, plan_kwargs)
            label = _label(plan)
            if plan.total > usable:
                reasons.append(f"{label}: needs {plan.total / GIB:.2f} GiB at micro-batch 1 > "
                               f"{usable / GIB:.2f} GiB usable")
                smallest = plan if smallest is None or plan.total < smallest.total else smallest
                continue
            best, mb = plan, 1
            while mb * 2 <= max_micro_batch:
                bigger = _plan(model_config, method, seq_len, mb * 2, num_gpus, gpu_memory_bytes, stage,
                               off_opt, off_par, ckpt, plan_kwargs)
                if bigger.total > usable:
                    break
                best, mb = bigger, mb * 2
            reasons.append(f"chosen {label}: micro-batch {mb} needs {best.total / GIB:.2f} GiB of "
                           f"{usable / GIB:.2f} GiB usable ({best.summary()})")
            return Recommendation(plan=best, reasons=tuple(reasons))
    need = f"{smallest.total / GIB:.2f} GiB ({_label(smallest)})" if smallest else "unknown"
    raise ResourceExhausted(
        f"no setup fits {num_gpus} GPU(s) of {gpu_memory_bytes / GIB:.2f} GiB at sequence length {seq_len}: "
        f"the smallest needs {need}; use more or larger GPUs, a shorter sequence length or QLoRA",
        reason="MEMORY_PLAN_DOES_NOT_FIT",
    )


def _plan(model_config: Any, method: Any, seq_len: int, mb: int, gpus: int, mem: int, stage: int,
          off_opt: bool, off_par: bool, ckpt: bool, kwargs: Mapping[str, Any]) -> MemoryPlan:
    return plan_memory(model_config, method, seq_len, mb, gpus, mem, stage, offload_optimizer=off_opt,
                       offload_params=off_par, gradient_checkpointing=ckpt, **kwargs)


def _label(plan: MemoryPlan) -> str:
    offload = "params+optimizer" if plan.offload_params else ("optimizer" if plan.offload_optimizer else "none")
    ckpt = "on" if plan.gradient_checkpointing else "off"
    return f"{plan.method.value}, ZeRO-{plan.zero_stage}, offload {offload}, checkpointing {ckpt}"
