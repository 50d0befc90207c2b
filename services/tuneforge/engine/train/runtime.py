"""How one worker runs forward, backward and the optimizer step: plain torch, alone or under DDP.

``LocalRuntime`` covers a single process and plain DDP (ZeRO stage 0). The DeepSpeed runtime in
``tuneforge.engine.distributed`` has the same surface, so the training loop never branches on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.spec import Precision
from tuneforge.engine.train.model_io import load_model_weights, save_model_folder

TRAINING_STATE_FILE = "training_state.pt"


class Runtime(Protocol):
    """What the training loop needs from a worker's execution backend."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def model(self) -> torch.nn.Module:
        """The module to call for forward passes (maybe wrapped by DDP or DeepSpeed)."""
        ...

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The user's model (a transformers or peft model)."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager[Any]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def optimizer_step(self) -> float: ...

    def current_lr(self) -> float: ...

    def all_reduce_sum(self, values: list[float]) -> list[float]: ...

    def barrier(self) -> None: ...

    def save_training_state(self, folder: Path) -> None: ...

    def load_training_state(self, folder: Path) -> str:
        """Restore optimizer and scheduler state; returns what could not be restored ('' if nothing)."""
        ...

    def save_model(self, folder: Path) -> None: ...

    def load_model(self, folder: Path) -> None: ...


def check_precision(precision: Precision, device: torch.device) -> None:
    """Refuse precisions the device cannot run, naming the fix.

    Raises:
        InvalidInput: fp16 on a CPU, or bf16 on a GPU without bf16 support.
    """
    if precision is Precision.FP16 and device.type != "cuda":
        raise InvalidInput.field_error("precision", "fp16 needs a CUDA GPU: use bf16 or fp32 on CPU")
    if precision is Precision.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidInput.field_error("precision", "this GPU has no bf16 support: use fp16 or fp32")


def optimizer_reset_note(why: str) -> str:
    """The note of a resume that restores weights and schedule but not the optimizer state."""
    return (
        f"the checkpoint {why}: resumed weights, learning-rate schedule and data position; the "
        "optimizer state (Adam moments) starts fresh, so the next steps differ from an uninterrupted "
        "run. Resume with the checkpoint's resources.num_workers and zero_stage to restore it"
    )


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    """Put a saved schedule's step into ``scheduler`` (a LambdaLR) and its LR into the optimizer.

    The schedule is a pure function of the step (``optim.lr_factor``), so only the step is taken:
    the saved per-group base LRs belong to the writer's optimizer, whose groups may differ.
    """
    step = int(state["last_epoch"])
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    scheduler.load_state_dict(
        {**state, "base_lrs": list(scheduler.base_lrs), "_last_lr": lrs, "lr_lambdas": [None] * len(lrs)}
    )
    # load_state_dict restores numbers only; the optimizer still holds the initial LR.
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class LocalRuntime:
    """Plain torch: one process, or DDP when torch.distributed is initialised.

    Args:
        model: the model, already on ``device``.
        optimizer: its optimizer.
        scheduler: the learning-rate scheduler, stepped once per optimizer step.
        precision: compute precision (autocast; fp16 also uses a GradScaler).
        max_grad_norm: clip the global gradient norm to this; 0 disables clipping.
        device: where the model lives.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        precision: Precision,
        max_grad_norm: float,
        device: torch.device,
    ) -> None:
        check_precision(precision, device)
        self.device = device
        self.rank, self.world_size = distributed_world()
        self._model = model
        self._wrapped: torch.nn.Module = model
        if self.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self._wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision is Precision.FP16)

    @property
    def model(self) -> torch.nn.Module:
        return self._wrapped

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self._model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for fp16/bf16, nothing for fp32."""
        if self.precision is Precision.FP32:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision is Precision.FP16 else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def micro_step(self, last: bool) -> Iterator[None]:
        """Skip DDP's gradient all-reduce on every micro-batch but the last of an optimizer step."""
        if self.world_size > 1 and not last:
            with self._wrapped.no_sync():  # type: ignore[operator]  # DDP's method; Module.__getattr__ types it as Tensor
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss already normalised for the whole optimizer step."""
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> float:
        """Unscale, clip, step optimizer and scheduler, zero grads; returns the pre-clip grad norm."""
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        limit = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def current_lr(self) -> float:
        """The learning rate the next optimizer step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum numbers over the workers (identity on one worker)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        """Wait for every worker."""
        if self.world_size > 1:
            dist.barrier()

    def save_training_state(self, folder: Path) -> None:
        """Worker 0 writes optimizer, scheduler and scaler state (tensors and numbers only)."""
        if self.rank == 0:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
            torch.save(state, folder / TRAINING_STATE_FILE)

    def load_training_state(self, folder: Path) -> str:
        """Restore what ``save_training_state`` wrote (``torch.load(weights_only=True)``).

        A DeepSpeed checkpoint (several workers under ZeRO) keeps its optimizer partitioned in
        ``deepspeed/``, which plain torch cannot read: the scheduler is restored, the optimizer
        starts fresh and the returned note says so.

        Returns:
            '' when everything was restored, else what was not (for the RESUMED event).
        """
        state = torch.load(folder / TRAINING_STATE_FILE, weights_only=True, map_location="cpu")
        if "optimizer" not in state:
            restore_scheduler(self.scheduler, state["scheduler"])
            return optimizer_reset_note("was written by DeepSpeed (ZeRO partitions plain torch cannot read)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return ""

    def save_model(self, folder: Path) -> None:
        """Worker 0 saves the weights (or adapter) as safetensors."""
        if self.rank == 0:
            save_model_folder(self._model, folder)

    def load_model(self, folder: Path) -> None:
        """Load weights saved by ``save_model`` into the model, in place."""
        load_model_weights(self._model, folder)
