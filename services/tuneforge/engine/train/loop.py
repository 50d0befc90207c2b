"""The training loop every recipe runs on each worker: plain torch, no framework.

Per optimizer step: collate this worker's micro-batches, count the loss units (label tokens or
preference pairs) over all workers, run forward/backward on each micro-batch with the loss
normalised by that global count (so gradient accumulation and data parallelism give the same
gradient as one big batch), clip, step, report. Evaluation, early stopping and checkpoints
happen between steps. Recipes supply the model and an ``Objective``; the loop knows nothing of
SFT or DPO.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.train.events import EngineEvent, EventCallback, EventKind, RunStatus
from tuneforge.engine.train.faults import fault_from_env, maybe_crash
from tuneforge.engine.train.monitor import EarlyStopping, Throughput, peak_memory_bytes, perplexity
from tuneforge.engine.train.position import StepPlan
from tuneforge.engine.train.runtime import Runtime
from tuneforge.engine.train.state import TrainerState

log = logging.getLogger(__name__)

Batch = dict[str, Any]


@dataclass
class LossSum:
    """An objective's output for one micro-batch.

    Attributes:
        total: sum of the per-unit losses (a scalar tensor with a graph).
        metrics: extra sums over units (e.g. DPO reward accuracy), averaged by the loop.
        means: (sum, count) of metrics with their own denominators (e.g. online RL's reward over
            completions): the loop adds both over micro-batches and workers and reports sum / count.
    """

    total: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    means: dict[str, tuple[float, float]] = field(default_factory=dict)


class Objective(Protocol):
    """What a recipe teaches the loop: how to batch rows and compute a loss."""

    name: str
    has_perplexity: bool

    def collate(self, rows: Sequence[Any]) -> Batch:
        """Turn rows into a batch of tensors (on CPU)."""
        ...

    def units(self, batch: Batch) -> int:
        """How many loss units the batch holds (label tokens for SFT, pairs for DPO)."""
        ...

    def tokens(self, batch: Batch) -> int:
        """Input tokens processed (for tokens/s)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        """Forward pass; the summed loss over the batch's units."""
        ...


class Checkpoints(Protocol):
    """The checkpoint manager the loop calls (``tuneforge.engine.train.checkpoint``)."""

    resumed_uri: str
    resume_note: str

    def resume(self, runtime: Runtime, plan: StepPlan) -> TrainerState | None: ...

    def save(self, runtime: Runtime, state: TrainerState, metric: float | None) -> str: ...

    def best_uri(self, state: TrainerState) -> str: ...


@dataclass(frozen=True)
class LoopConfig:
    """The loop's schedule (optimizer hyperparameters live in the runtime).

    Attributes:
        total_steps: optimizer steps to run.
        eval_every: evaluate every N steps (0: only at the end); needs evaluation rows.
        checkpoint_every: checkpoint every N steps (0: only at the end).
        early_stopping_patience: evaluations without improvement before stopping (0: off).
        early_stopping_min_delta: smallest improvement of the best metric that counts.
        best_metric: the eval metric that ranks checkpoints and drives early stopping.
        greater_is_better: whether a higher ``best_metric`` is better.
    """

    total_steps: int
    eval_every: int = 0
    checkpoint_every: int = 0
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    best_metric: str = "eval_loss"
    greater_is_better: bool = False


@dataclass
class LoopOutcome:
    """What the loop returns to the recipe."""

    status: RunStatus
    state: TrainerState
    last_checkpoint_uri: str = ""
    best_checkpoint_uri: str = ""
    resumed_from_uri: str = ""


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _row_names(rows: Sequence[Any], idx: list[int]) -> list[Any]:
    # Rows built from canonical records carry their source ids (``train[12]``).
    return [r.get("rows", i) if isinstance(r := rows[i], dict) else i for i in idx]


def _masked_rows_error(rows: list[Any] | None) -> InvalidInput:
    where = f"rows {rows} of the training split" if rows else "a batch on another worker"
    return InvalidInput.field_error(
        "data",
        f"every label is masked in {where}: the loss would be 0 and teach nothing. Check the "
        "assistant turns are not empty or truncated away (raise max_seq_length), or disable "
        "assistant-only loss",
    )


def train_step(
    runtime: Runtime, objective: Objective, rows: Sequence[Any], plan: StepPlan, step: int
) -> dict[str, float]:
    """Run one optimizer step (all its micro-batches) and return its metrics.

    Raises:
        InvalidInput: when a micro-batch has no unmasked label on any worker.
    """
    index_lists = plan.micro_batches(step, runtime.rank)
    begin = getattr(objective, "begin_step", None)
    if begin is not None:  # online RL: rollouts are seeded per step, so a resumed run samples the same
        begin(step)
    batches = [objective.collate([rows[i] for i in idx]) for idx in index_lists]
    units = [objective.units(b) for b in batches]
    empty = [_row_names(rows, idx) for idx, u in zip(index_lists, units, strict=True) if u == 0]
    total_units, n_empty = runtime.all_reduce_sum([float(sum(units)), float(len(empty))])
    if n_empty:
        raise _masked_rows_error(empty[0] if empty else None)
    timer = Throughput()
    lr = runtime.current_lr()
    loss_sum, tokens = 0.0, 0
    extra: dict[str, Any] = {}
    means: dict[str, list[float]] = {}
    for k, batch in enumerate(batches):
        last = k == len(batches) - 1
        with runtime.micro_step(last):
            with runtime.autocast():
                out = objective.loss(runtime.model, _to_device(batch, runtime.device))
            # Data-parallel backends average gradients over workers: scale so the result is the
            # mean over all units of the whole step.
            runtime.backward(out.total * (runtime.world_size / total_units))
        loss_sum += float(out.total.detach())
        tokens += objective.tokens(batch)
        for key, val in out.metrics.items():
            extra[key] = extra.get(key, 0.0) + val
        for key, (num, den) in out.means.items():
            acc = means.setdefault(key, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + num, acc[1] + den
    grad_norm = runtime.optimizer_step()
    keys, mean_keys = sorted(extra), sorted(means)
    flat_means = [v for key in mean_keys for v in means[key]]
    sums = runtime.all_reduce_sum([loss_sum, float(tokens), *[extra[k] for k in keys], *flat_means])
    metrics = {"loss": sums[0] / total_units, "lr": lr, "grad_norm": grad_norm}
    metrics |= timer.rates(int(sums[1]), plan.rows_per_step)
    metrics |= {k: v / total_units for k, v in zip(keys, sums[2:2 + len(keys)], strict=True)}
    tail = sums[2 + len(keys):]
    metrics |= {k: tail[2 * i] / max(tail[2 * i + 1], 1e-12) for i, k in enumerate(mean_keys)}
    metrics["peak_memory_bytes"] = float(peak_memory_bytes(runtime.device))
    if not math.isfinite(metrics["loss"]):
        log.warning("step %d: loss is %s", step + 1, metrics["loss"])
    return metrics


def _eval_shards(n: int, micro_batch: int, world: int, rank: int) -> list[tuple[list[int], bool]]:
    # Every worker runs the same number of forward passes (ZeRO-3 gathers parameters collectively);
    # a worker past the end of its shard reruns row 0 and does not count it.
    chunk = micro_batch * world
    out = []
    for start in range(0, n, chunk):
        idx = list(range(start + rank * micro_batch, min(start + (rank + 1) * micro_batch, n)))
        out.append((idx, True) if idx else ([0], False))
    return out


@torch.no_grad()
def evaluate(
    runtime: Runtime, objective: Objective, rows: Sequence[Any], micro_batch: int
) -> dict[str, float]:
    """Mean loss (and perplexity for language-model objectives) over ``rows``, all workers together."""
    model = runtime.model
    model.eval()
    total, units = 0.0, 0.0
    # Objectives may name metric sums that evaluation reports too (a reward model's accuracy).
    keys: tuple[str, ...] = tuple(getattr(objective, "eval_metrics", ()))
    extra = dict.fromkeys(keys, 0.0)
    try:
        for idx, counts in _eval_shards(len(rows), micro_batch, runtime.world_size, runtime.rank):
            batch = objective.collate([rows[i] for i in idx])
            with runtime.autocast():
                out = objective.loss(model, _to_device(batch, runtime.device))
            if counts:
                total += float(out.total)
                units += objective.units(batch)
                for key in keys:
                    extra[key] += out.metrics.get(key, 0.0)
    finally:
        model.train()
    total, units, *sums = runtime.all_reduce_sum([total, units, *(extra[k] for k in keys)])
    mean = total / max(units, 1.0)
    metrics = {"eval_loss": mean}
    metrics |= {f"eval_{k}": v / max(units, 1.0) for k, v in zip(keys, sums, strict=True)}
    if objective.has_perplexity:
        metrics["eval_perplexity"] = perplexity(mean)
    return metrics


def cancel_requested(runtime: Runtime, cancel: threading.Event | None) -> bool:
    """Whether to stop now, decided by worker 0 for all (a worker that alone stopped would leave
    the others waiting in the next collective)."""
    if cancel is None:
        return False
    asked = float(cancel.is_set()) if runtime.rank == 0 else 0.0
    return runtime.all_reduce_sum([asked])[0] > 0


def train_loop(
    runtime: Runtime,
    objective: Objective,
    train_rows: Sequence[Any],
    eval_rows: Sequence[Any],
    plan: StepPlan,
    cfg: LoopConfig,
    *,
    checkpoints: Checkpoints | None = None,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
) -> LoopOutcome:
    """Train until ``cfg.total_steps``, early stopping or cancellation; resume first if possible.

    Args:
        runtime: the worker's backend (model, optimizer, scheduler already built).
        objective: batching and loss of the recipe.
        train_rows: tokenized training rows (indexed by the step plan).
        eval_rows: tokenized validation rows (may be empty: no evaluation).
        plan: how rows map to optimizer steps.
        cfg: steps, evaluation, checkpoint and early-stopping cadence.
        checkpoints: saves and restores checkpoints; None runs without any.
        on_event: receives metrics (on worker 0 only).
        cancel: set it to stop after the current step (no final checkpoint).

    Returns:
        The final status and trainer state, and checkpoint URIs.
    """
    plan.check()
    emit = on_event if (on_event is not None and runtime.rank == 0) else (lambda _e: None)
    state = (checkpoints.resume(runtime, plan) if checkpoints else None) or TrainerState()
    state.world_size, state.rows_per_step = plan.world_size, plan.rows_per_step
    stopper = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
    if state.early_stopping:
        stopper.load_state_dict(state.early_stopping)
    resumed = checkpoints.resumed_uri if checkpoints else ""
    if resumed:
        # The note says what could not be restored (e.g. optimizer state of another worker count).
        note = checkpoints.resume_note if checkpoints else ""
        emit(EngineEvent(EventKind.RESUMED, state.global_step, uri=resumed, message=note))
    emit(EngineEvent(EventKind.STARTED, state.global_step, {"total_steps": float(cfg.total_steps)}))
    runtime.model.train()
    status, last_uri = RunStatus.COMPLETED, ""
    fault = fault_from_env()
    while state.global_step < cfg.total_steps:
        if cancel_requested(runtime, cancel):
            status = RunStatus.CANCELLED
            break
        maybe_crash(fault, runtime.rank, state.global_step + 1)
        metrics = train_step(runtime, objective, train_rows, plan, state.global_step)
        state.global_step += 1
        state.position = plan.position(state.global_step)
        state.lr_history.append(metrics["lr"])
        metrics["epoch"] = state.global_step / plan.steps_per_epoch
        state.metrics = dict(metrics)
        emit(EngineEvent(EventKind.STEP, state.global_step, metrics))
        done = state.global_step == cfg.total_steps
        metric, stop = None, False
        if eval_rows and ((cfg.eval_every and state.global_step % cfg.eval_every == 0) or done):
            ev = evaluate(runtime, objective, eval_rows, plan.micro_batch)
            state.metrics |= ev
            # Scores are "lower is better" everywhere downstream.
            value = ev.get(cfg.best_metric, ev["eval_loss"])
            metric = -value if cfg.greater_is_better else value
            stop = stopper.update(metric)
            state.early_stopping = stopper.state_dict()
            emit(EngineEvent(EventKind.EVAL, state.global_step, ev))
        due = cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0
        if checkpoints is not None and (due or done or stop):
            last_uri = checkpoints.save(runtime, state, metric)
            emit(EngineEvent(EventKind.CHECKPOINT, state.global_step, dict(state.metrics), uri=last_uri))
        if stop:
            status = RunStatus.EARLY_STOPPED
            emit(EngineEvent(EventKind.EARLY_STOPPED, state.global_step, {"best_score": stopper.best}))
            break
    best = checkpoints.best_uri(state) if checkpoints else ""
    emit(EngineEvent(EventKind.FINISHED, state.global_step, dict(state.metrics), message=status.value))
    return LoopOutcome(status, state, last_uri, best, resumed)
