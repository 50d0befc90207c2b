"""ORPO and SimPO on (prompt, chosen, rejected) records: preference optimisation without a reference model.

The same data path as DPO (one preference dataset, pairs side by side, no packing); the loss uses
length-normalised completion log-probs of the policy alone. Reads top to bottom: setup, the
training loop, the final save, cleanup.
"""

from __future__ import annotations

import threading

from tuneforge.engine.data.tokenize import tokenize_preference
from tuneforge.engine.recipes import _common as c
from tuneforge.engine.spec import ObjectiveKind, TrainingSpec
from tuneforge.engine.train.events import EventCallback, TrainingResult
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import ReferenceFreeObjective


def objective_for(spec: TrainingSpec, pad_id: int) -> ReferenceFreeObjective:
    """The ORPO or SimPO objective with the spec's hyperparameters."""
    o = spec.objective
    if o.kind is ObjectiveKind.ORPO:
        return ReferenceFreeObjective(pad_id, kind="orpo", beta=o.orpo.beta)
    if o.kind is ObjectiveKind.SIMPO:
        return ReferenceFreeObjective(pad_id, kind="simpo", beta=o.simpo.beta, gamma=o.simpo.gamma)
    raise ValueError(f"the reference-free recipe trains orpo or simpo, not {o.kind.value}")


def run(
    spec: TrainingSpec, *, on_event: EventCallback | None = None, cancel: threading.Event | None = None
) -> TrainingResult:
    """Train the policy to prefer chosen over rejected completions (ORPO or SimPO)."""
    # -- setup
    c.seed_everything(spec.hyperparameters.seed)
    device = c.device_for(spec)
    ds_config = c.zero3_context(spec)  # must stay alive while the model loads and trains (ZeRO-3)
    model, tokenizer = c.load_model(spec, device, ds_config)
    train_records, val_records = c.read_splits(spec)
    max_len = spec.data.max_seq_length
    train_rows = [c.pair_row(p) for p in tokenize_preference(train_records, tokenizer, max_len=max_len)]
    val_rows = [c.pair_row(p) for p in tokenize_preference(val_records, tokenizer, max_len=max_len,
                                                           source="validation")]
    plan = c.step_plan(spec, len(train_rows))
    total, warmup = c.total_and_warmup(spec, plan)
    runtime = c.build_runtime(spec, model, device, total, warmup)
    objective = objective_for(spec, tokenizer.pad_token_id)
    checkpoints = c.checkpoint_manager(spec, tokenizer)
    # -- train (checkpoints every N steps and at the end)
    try:
        outcome = train_loop(runtime, objective, train_rows, val_rows, plan, c.loop_config(spec, total),
                             checkpoints=checkpoints, on_event=on_event, cancel=cancel)
    # -- cleanup
    finally:
        checkpoints.cleanup()
    return c.result(outcome)
