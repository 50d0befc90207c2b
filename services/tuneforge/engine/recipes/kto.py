"""KTO on unpaired (prompt, completion, label) records: desirable completions up, undesirable ones down.

The reference is the same model with its adapter disabled (adapter methods) or a frozen copy of the
initial model (full fine-tuning), as for DPO. The KL reference point is estimated per micro-batch
from mismatched prompt/completion pairs, as trl's ``KTOTrainer`` does. Reads top to bottom: setup,
the training loop, the final save, cleanup.
"""

from __future__ import annotations

import copy
import threading

from tuneforge.engine.data.tokenize import tokenize_labelled
from tuneforge.engine.recipes import _common as c
from tuneforge.engine.spec import DpoReference, TrainingSpec
from tuneforge.engine.train.events import EventCallback, TrainingResult
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import KTOObjective, Reference


def run(
    spec: TrainingSpec, *, on_event: EventCallback | None = None, cancel: threading.Event | None = None
) -> TrainingResult:
    """Train the policy on completions labelled desirable or undesirable, relative to the reference."""
    # -- setup
    c.seed_everything(spec.hyperparameters.seed)
    device = c.device_for(spec)
    ds_config = c.zero3_context(spec)  # must stay alive while the model loads and trains (ZeRO-3)
    model, tokenizer = c.load_model(spec, device, ds_config)
    kto = spec.objective.kto
    if kto.reference is DpoReference.ADAPTER_DISABLED:
        reference = Reference(adapter_model=model)
    else:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        reference = Reference(frozen_model=frozen)
    train_records, val_records = c.read_splits(spec)
    max_len = spec.data.max_seq_length
    train_rows = tokenize_labelled(train_records, tokenizer, max_len=max_len)
    val_rows = tokenize_labelled(val_records, tokenizer, max_len=max_len, source="validation")
    plan = c.step_plan(spec, len(train_rows))
    total, warmup = c.total_and_warmup(spec, plan)
    runtime = c.build_runtime(spec, model, device, total, warmup)
    objective = KTOObjective(tokenizer.pad_token_id, beta=kto.beta, desirable_weight=kto.desirable_weight,
                             undesirable_weight=kto.undesirable_weight, reference=reference)
    checkpoints = c.checkpoint_manager(spec, tokenizer)
    # -- train (checkpoints every N steps and at the end)
    try:
        outcome = train_loop(runtime, objective, train_rows, val_rows, plan, c.loop_config(spec, total),
                             checkpoints=checkpoints, on_event=on_event, cancel=cancel)
    # -- cleanup
    finally:
        checkpoints.cleanup()
    return c.result(outcome)
