"""GRPO, RLOO and PPO on prompt-only records: sample, score, update (one policy update per rollout).

PPO's value head is a ``Linear(hidden, 1)`` on the policy's last hidden state (``v_head``), trained
with it and saved in the same full checkpoint, so it resumes with the policy.

The reference (for the KL term) is the policy with its adapter disabled (adapters) or a frozen copy
of the initial model (full fine-tuning); it is rebuilt from the base on resume, so a checkpoint needs
only the policy, its optimizer and the loop's position (rollouts are seeded per step). Reads top to
bottom: setup, the training loop, the final save, cleanup.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch

from tuneforge.engine.data.tokenize import tokenize_prompts
from tuneforge.engine.recipes import _common as c
from tuneforge.engine.rl.generation import HFRolloutEngine
from tuneforge.engine.rl.objective import OnlineRLObjective, add_value_head
from tuneforge.engine.rl.rewards import RewardModelScorer
from tuneforge.engine.spec import ObjectiveKind, TrainingSpec
from tuneforge.engine.train.events import EventCallback, TrainingResult
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import Reference
from tuneforge.engine.train.runtime import distributed_world


def stop_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Ids that end a completion: the generation config's eos ids and the tokenizer's eos."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(eos) if isinstance(eos, list | tuple) else ([eos] if eos is not None else [])
    ids.append(tokenizer.eos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.append(end_of_turn)
    return [int(i) for i in dict.fromkeys(ids) if i is not None]


def run(
    spec: TrainingSpec, *, on_event: EventCallback | None = None, cancel: threading.Event | None = None
) -> TrainingResult:
    """Train the policy on its own sampled completions, rewarded by the spec's reward functions/model."""
    # -- setup
    c.seed_everything(spec.hyperparameters.seed)
    device = c.device_for(spec)
    ds_config = c.zero3_context(spec)  # must stay alive while the model loads and trains (ZeRO-3)
    model, tokenizer = c.load_model(spec, device, ds_config)
    rl = spec.objective.rl
    reference = None
    if rl.beta:
        reference = Reference(adapter_model=model) if spec.is_adapter else Reference(
            frozen_model=copy.deepcopy(model).eval().requires_grad_(False))
    if spec.objective.kind is ObjectiveKind.PPO:  # after the reference copy: the reference needs no values
        add_value_head(model)
    train_records, _ = c.read_splits(spec)
    max_prompt = max(1, spec.data.max_seq_length - rl.max_new_tokens)
    rows = tokenize_prompts(train_records, tokenizer, max_prompt_len=max_prompt)
    plan = c.step_plan(spec, len(rows))
    total, warmup = c.total_and_warmup(spec, plan)
    runtime = c.build_runtime(spec, model, device, total, warmup)
    policy = runtime.unwrapped
    synced = spec.resources.zero_stage == 3 and spec.resources.num_workers > 1
    engine = HFRolloutEngine(policy, tokenizer.pad_token_id, stop_ids(policy, tokenizer), synced=synced)
    scorer = RewardModelScorer(rl.reward_model_path, device, adapter=rl.reward_model_adapter_path) \
        if rl.reward_model_path else None
    rank, _world = distributed_world()
    objective = OnlineRLObjective(spec.objective.kind, rl, tokenizer, engine, policy, reference,
                                  reward_model=scorer, seed=spec.hyperparameters.seed, rank=rank)
    checkpoints = c.checkpoint_manager(spec, tokenizer)
    # -- train (checkpoints every N steps and at the end)
    try:
        outcome = train_loop(runtime, objective, rows, [], plan, c.loop_config(spec, total),
                             checkpoints=checkpoints, on_event=on_event, cancel=cancel)
    # -- cleanup
    finally:
        checkpoints.cleanup()
    return c.result(outcome)
