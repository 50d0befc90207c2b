"""DeepSpeed ZeRO 1/2/3 behind the same surface as ``LocalRuntime`` (used inside Ray workers).

The loop normalises each micro-batch loss for the whole step, so backward runs with
``scale_wrt_gas=False``; DeepSpeed counts micro-batches and steps the optimizer and scheduler at
each accumulation boundary. ZeRO-3 weights are gathered on save (``_zero3_consolidated_16bit_
state_dict``; peft extracts the adapter from the gathered dict).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tuneforge.engine.spec import Precision, TrainingSpec
from tuneforge.engine.train.model_io import load_model_weights, save_model_folder
from tuneforge.engine.train.optim import build_optimizer, build_scheduler
from tuneforge.engine.train.runtime import TRAINING_STATE_FILE


def deepspeed_config(spec: TrainingSpec, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for the spec's ZeRO stage, offload, precision and batch geometry."""
    hp, res = spec.hyperparameters, spec.resources
    zero: dict[str, Any] = {"stage": res.zero_stage}
    if res.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if res.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": hp.micro_batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "train_batch_size": hp.micro_batch_size * hp.gradient_accumulation_steps * world_size,
        "gradient_clipping": hp.max_grad_norm or 0.0,
        "zero_optimization": zero,
        # A torch optimizer with offload: DeepSpeed would otherwise insist on its compiled CPU Adam.
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": spec.precision is Precision.BF16},
        "fp16": {"enabled": spec.precision is Precision.FP16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class DeepSpeedRuntime:
    """A DeepSpeed engine driven by the training loop."""

    def __init__(
        self, model: torch.nn.Module, spec: TrainingSpec, *, device: torch.device, total_steps: int, warmup_steps: int
    ) -> None:
        import deepspeed

        hp = spec.hyperparameters
        self.device = device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.zero_stage = spec.resources.zero_stage
        self._model = model
        optimizer = build_optimizer(model, learning_rate=hp.learning_rate, weight_decay=hp.weight_decay)
        scheduler = build_scheduler(optimizer, hp.lr_scheduler, warmup_steps=warmup_steps, total_steps=total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(spec, self.world_size),
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.engine

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self._model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # DeepSpeed casts itself (bf16/fp16 sections)

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # DeepSpeed reduces at its own accumulation boundary

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # a real optimizer step only at the accumulation boundary

    def optimizer_step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        dist.barrier()

    def _gathered_state(self) -> dict[str, torch.Tensor] | None:
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()  # every rank must call it
        return None

    def save_model(self, folder: Path) -> None:
        """Gather (ZeRO-3) and save on worker 0."""
        state = self._gathered_state()
        if self.rank == 0:
            save_model_folder(self._model, folder, state_dict=state)

    def load_model(self, folder: Path) -> None:
        """Load saved weights into the (possibly partitioned) model parameters."""
        if self.zero_stage != 3:
            load_model_weights(self._model, folder)
            return
        import deepspeed

        params = [p for p in self._model.parameters()]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if self.rank == 0:
                load_model_weights(self._model, folder)

    def save_training_state(self, folder: Path) -> None:
        """Scheduler on worker 0 (the optimizer state is partitioned: see the module docstring)."""
        if self.rank == 0:
            torch.save({"scheduler": self.scheduler.state_dict()}, folder / TRAINING_STATE_FILE)

    def load_training_state(self, folder: Path) -> None:
        state = torch.load(folder / TRAINING_STATE_FILE, weights_only=True, map_location="cpu")
        self.scheduler.load_state_dict(state["scheduler"])
