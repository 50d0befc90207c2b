"""Reward models on (prompt, chosen, rejected) records: a sequence-classification head, Bradley-Terry loss.

The base model is loaded as ``AutoModelForSequenceClassification`` with one output (full weights, or
LoRA with the score head trained in full); every pair scores prompt + chosen and prompt + rejected,
and the loss is -log sigmoid(r_chosen - r_rejected - margin). Evaluation reports the pairwise
accuracy on held-out pairs (``eval_reward_accuracy``). Reads top to bottom: setup, the training
loop, the final save, cleanup.
"""

from __future__ import annotations

import threading
from typing import Any

from tuneforge.engine.data.tokenize import tokenize_preference
from tuneforge.engine.recipes import _common as c
from tuneforge.engine.spec import TrainingSpec
from tuneforge.engine.train.events import EventCallback, TrainingResult
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import RewardModelObjective


def reward_rows(records: list[Any], tokenizer: Any, max_len: int, source: str) -> list[dict[str, Any]]:
    """Tokenized pairs as the objective's rows, each with its record's margin (None: the default)."""
    rows = []
    for rec, pair in zip(records, tokenize_preference(records, tokenizer, max_len=max_len, source=source),
                         strict=True):
        rows.append({**c.pair_row(pair), "margin": rec.margin})
    return rows


def run(
    spec: TrainingSpec, *, on_event: EventCallback | None = None, cancel: threading.Event | None = None
) -> TrainingResult:
    """Train a reward model to score chosen completions above rejected ones."""
    # -- setup
    c.seed_everything(spec.hyperparameters.seed)
    device = c.device_for(spec)
    ds_config = c.zero3_context(spec)  # must stay alive while the model loads and trains (ZeRO-3)
    model, tokenizer = c.load_model(spec, device, ds_config)  # a sequence classifier, num_labels=1
    train_records, val_records = c.read_splits(spec)
    max_len = spec.data.max_seq_length
    train_rows = reward_rows(train_records, tokenizer, max_len, "train")
    val_rows = reward_rows(val_records, tokenizer, max_len, "validation")
    plan = c.step_plan(spec, len(train_rows))
    total, warmup = c.total_and_warmup(spec, plan)
    runtime = c.build_runtime(spec, model, device, total, warmup)
    settings = spec.objective.reward_model
    objective = RewardModelObjective(tokenizer.pad_token_id, default_margin=settings.margin,
                                     center_coefficient=settings.center_rewards_coefficient)
    checkpoints = c.checkpoint_manager(spec, tokenizer)
    # -- train (checkpoints every N steps and at the end)
    try:
        outcome = train_loop(runtime, objective, train_rows, val_rows, plan, c.loop_config(spec, total),
                             checkpoints=checkpoints, on_event=on_event, cancel=cancel)
    # -- cleanup
    finally:
        checkpoints.cleanup()
    return c.result(outcome)
