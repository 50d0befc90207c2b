"""DeepSpeed ZeRO 1/2/3 behind the same surface as ``LocalRuntime`` (used inside Ray workers).

The loop normalises each micro-batch loss for the whole step, so backward runs with
``scale_wrt_gas=False``; DeepSpeed counts micro-batches and steps the optimizer and scheduler at
each accumulation boundary. ZeRO-3 weights are gathered on save (``_zero3_consolidated_16bit_
state_dict``; peft extracts the adapter from the gathered dict).

Training state is DeepSpeed's own checkpoint (``engine.save_checkpoint`` into ``deepspeed/`` of
the checkpoint folder): each worker's optimizer partition with the fp32 master weights and Adam
moments, the scheduler and DeepSpeed's step counters. Restoring it (``engine.load_checkpoint``)
gives the exact optimizer of the interrupted run; at ZeRO-1/2 it also puts back the fp32 master
copy that would otherwise overwrite reloaded weights at the next step. DeepSpeed's own loader
calls ``torch.load(weights_only=False)``; this runtime swaps in a checkpoint engine that loads
with ``weights_only=True`` and allows exactly the few DeepSpeed classes those files hold
(``DS_SAFE_GLOBALS``). A checkpoint written by another world size (or without a DeepSpeed
folder) restores weights and scheduler only, and says so (the note ``load_training_state``
returns, logged and put on the RESUMED event): ZeRO partitions cannot be re-split.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from tuneforge.common.errors import Internal
from tuneforge.engine.spec import Precision, TrainingSpec
from tuneforge.engine.train.model_io import load_model_weights, save_model_folder
from tuneforge.engine.train.optim import build_optimizer, build_scheduler
from tuneforge.engine.train.runtime import TRAINING_STATE_FILE, optimizer_reset_note, restore_scheduler

log = logging.getLogger(__name__)

DS_STATE_DIR = "deepspeed"
_DS_TAG = "state"
# The non-tensor classes DeepSpeed 0.19 pickles into its ZeRO optimizer files (checked with
# ``torch.serialization.get_unsafe_globals_in_checkpoint`` at stages 1-3); nothing else is allowed.
DS_SAFE_GLOBALS: tuple[type, ...] = (ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler)


def _enum_member(cls: Any, name: Any) -> Enum:
    """Stands in for ``builtins.getattr`` while DeepSpeed state is unpickled: enum members only.

    Python 3.11.0-3.11.2 (Debian 12's 3.11.2 runs in the images) pickle an Enum member as
    ``getattr(cls, name)`` rather than ``cls(value)``, so ZeRO optimizer files written there name
    ``builtins.getattr``. The real getattr cannot be allowed: chained over allowed classes it reaches
    any attribute (``__init__.__globals__`` and on to modules), i.e. arbitrary code. This allows
    exactly one shape: an allowed Enum class and the name of one of its members.
    """
    if not (isinstance(cls, type) and issubclass(cls, Enum) and cls in DS_SAFE_GLOBALS):
        raise pickle.UnpicklingError(f"getattr on {cls!r} is not allowed: only members of allowed enums")
    if not isinstance(name, str) or name not in cls.__members__:
        raise pickle.UnpicklingError(f"{name!r} is not a member of {cls.__name__}")
    return cls[name]


# What torch's weights_only unpickler may call: the classes, plus _enum_member under the name the
# 3.11.0-3.11.2 pickles use for it.
_SAFE_LOAD_GLOBALS: list[Any] = [*DS_SAFE_GLOBALS, (_enum_member, "builtins.getattr")]


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True`` (no code unpickled)."""

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(_SAFE_LOAD_GLOBALS):
                return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            raise Internal(
                f"DeepSpeed state {path} holds classes outside the allowed list {found}: it was written "
                "by another DeepSpeed version or config; resume from a checkpoint of this version"
            ) from exc


def deepspeed_config(spec: TrainingSpec, world_size: int, hidden_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config for the spec's ZeRO stage, offload, precision and batch geometry.

    Args:
        spec: the training spec.
        world_size: number of workers.
        hidden_size: the model's hidden size; at ZeRO-3 it sets which parameters stay whole on
            every worker (those under ``10 * hidden_size`` elements, transformers' "auto" rule)
            instead of DeepSpeed's fixed 100k, under which a small model would not be partitioned.
            The same value must reach ``HfDeepSpeedConfig`` and ``deepspeed.initialize``.
    """
    hp, res = spec.hyperparameters, spec.resources
    zero: dict[str, Any] = {"stage": res.zero_stage}
    if res.zero_stage == 3 and hidden_size:
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
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
            config=deepspeed_config(spec, self.world_size, getattr(getattr(model, "config", None), "hidden_size", None)),
        )
        self.engine.checkpoint_engine = SafeCheckpointEngine(self.engine._config)

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
        """DeepSpeed's checkpoint (every worker writes its partition) plus the scheduler on worker 0.

        The scheduler is also kept apart so that another world size can still resume the LR curve.
        """
        ds_dir = folder / DS_STATE_DIR
        # Only weights the optimizer owns are in DeepSpeed's module file; frozen ones are in model/.
        self.engine.save_checkpoint(str(ds_dir), tag=_DS_TAG, client_state={}, save_latest=False,
                                    exclude_frozen_parameters=True)
        if self.rank == 0:
            # DeepSpeed drops a copy of its zero_to_fp32.py next to the state: keep checkpoints data only.
            for script in ds_dir.rglob("*.py"):
                script.unlink()
            torch.save({"scheduler": self.scheduler.state_dict()}, folder / TRAINING_STATE_FILE)

    def _saved_world_size(self, ds_dir: Path) -> int:
        return len(list((ds_dir / _DS_TAG).glob("*zero_pp_rank_*_optim_states.pt")))

    def load_training_state(self, folder: Path) -> str:
        """Restore DeepSpeed's checkpoint: optimizer partitions (Adam moments, fp32 master), scheduler.

        Returns:
            '' when the optimizer was restored; else (another world size, or a checkpoint without
            DeepSpeed state) the note that it starts fresh.

        Raises:
            Internal: when DeepSpeed finds no state to load in a folder that has one.
        """
        ds_dir = folder / DS_STATE_DIR
        saved = self._saved_world_size(ds_dir)
        if saved != self.world_size:
            why = (f"holds DeepSpeed optimizer state for {saved} workers, this run has {self.world_size}" if saved
                   else "holds no DeepSpeed optimizer state (written by a single worker or at ZeRO stage 0)")
            # The weights were loaded into the module (load_model): copy them into DeepSpeed's fp32
            # master partitions, which the next step would otherwise write back over them.
            self.engine.optimizer.refresh_fp32_params()
            state = torch.load(folder / TRAINING_STATE_FILE, weights_only=True, map_location="cpu")
            restore_scheduler(self.scheduler, state["scheduler"])
            return optimizer_reset_note(why)
        path, _client = self.engine.load_checkpoint(
            str(ds_dir), tag=_DS_TAG, load_module_strict=False,
            load_optimizer_states=True, load_lr_scheduler_states=True,
        )
        if path is None:
            raise Internal(f"DeepSpeed found no state to load in {ds_dir}: the checkpoint is incomplete")
        return ""
