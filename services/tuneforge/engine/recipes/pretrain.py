"""Continued pre-training on raw text (documents joined with EOS and cut into rows), also over a
weighted mixture. Reads top to bottom: setup, the training loop, the final save, cleanup."""

from __future__ import annotations

import threading

from tuneforge.engine.data.tokenize import tokenize_pretrain
from tuneforge.engine.recipes import _common as c
from tuneforge.engine.spec import TrainingSpec
from tuneforge.engine.train.events import EventCallback, TrainingResult
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import CausalLMObjective


def run(
    spec: TrainingSpec, *, on_event: EventCallback | None = None, cancel: threading.Event | None = None
) -> TrainingResult:
    """Learn every token of the documents (next-token prediction)."""
    # -- setup
    c.seed_everything(spec.hyperparameters.seed)
    device = c.device_for(spec)
    ds_config = c.zero3_context(spec)  # must stay alive while the model loads and trains (ZeRO-3)
    model, tokenizer = c.load_model(spec, device, ds_config)
    train_records, val_records = c.read_splits(spec)
    if spec.data.mixture:
        train_records = c.read_mixture(spec)
    max_len = spec.data.max_seq_length
    train_rows = [c.example_row(e) for e in tokenize_pretrain(train_records, tokenizer, max_len=max_len)]
    val_rows = [c.example_row(e) for e in tokenize_pretrain(val_records, tokenizer, max_len=max_len,
                                                            source="validation")]
    plan = c.step_plan(spec, len(train_rows))
    total, warmup = c.total_and_warmup(spec, plan)
    runtime = c.build_runtime(spec, model, device, total, warmup)
    objective = CausalLMObjective(tokenizer.pad_token_id, collate=c.collator(spec, tokenizer), name="pretrain")
    checkpoints = c.checkpoint_manager(spec, tokenizer)
    # -- train (checkpoints every N steps and at the end)
    try:
        outcome = train_loop(runtime, objective, train_rows, val_rows, plan, c.loop_config(spec, total),
                             checkpoints=checkpoints, on_event=on_event, cancel=cancel)
    # -- cleanup
    finally:
        checkpoints.cleanup()
    return c.result(outcome)
