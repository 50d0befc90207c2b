"""Memory of an online RL step (GRPO, RLOO, PPO): the update pass plus what RL adds (internal: import
from ``tuneforge.engine.planner``).

On top of ``plan_memory`` for the update (``prompts x num_generations`` sequences of prompt +
completion tokens in one micro-batch):
    reference: a frozen copy of the weights for full fine-tuning (adapters disable the adapter
        instead: no copy), partitioned like the policy's weights under ZeRO-3;
    value model: PPO's separate value model, trained (weights, gradients, optimizer state) like the
        policy (a value head on the policy's trunk is a few kilobytes and not counted);
    rollout: the generation's key/value cache and last-position logits for every sequence sampled
        at once, and the rollout buffers kept for the update (ids, masks, per-token log-probs of the
        sampler and the reference, advantages, values: fp32).
The rollout's cache is freed before the update's activations exist, so the peak is the larger of
the two, not their sum.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tuneforge.engine.planner._estimate import MemoryPlan, Method, _arch, _count, plan_memory


def plan_online_rl(
    model_config: Any,
    method: Method | str,
    *,
    prompt_len: int,
    max_new_tokens: int,
    prompts: int,
    num_generations: int,
    reference: bool,
    value_model: bool = False,
    num_gpus: int = 1,
    zero_stage: int | None = None,
    dtype: str = "bf16",
    **kwargs: Any,
) -> MemoryPlan:
    """Estimate the per-GPU peak of one online RL step (see the module docstring).

    Args:
        prompts: prompts per micro-batch on one GPU; num_generations: completions per prompt.
        reference: whether a KL term needs the reference (beta > 0).
        value_model: PPO's separate value model.
        kwargs: passed to ``plan_memory`` (offload, LoRA shape, gradient checkpointing, ...).
    """
    seqs, seq_len = prompts * num_generations, prompt_len + max_new_tokens
    update = plan_memory(model_config, method, seq_len, seqs, num_gpus, zero_stage=zero_stage, dtype=dtype, **kwargs)
    arch, counts = _arch(model_config), _count(_arch(model_config))
    w = 4 if dtype == "fp32" else 2
    shard = num_gpus if update.zero_stage == 3 else 1
    ref_bytes = w * counts.total // shard if reference and update.method is Method.FULL else 0
    value_bytes = update.model_states if value_model else 0
    kv_cache = 2 * arch.layers * arch.kv_heads * arch.head_dim * seq_len * seqs * w
    gen_logits = seqs * arch.vocab * 4  # the sampler's fp32 logits of the last position
    buffers = seqs * seq_len * (8 + 1) + seqs * max_new_tokens * 4 * (4 if value_model else 3)
    rollout_peak = kv_cache + gen_logits
    peak_extra = max(rollout_peak - update.activations, 0)
    total = update.total + ref_bytes + value_bytes + buffers + peak_extra
    notes = (*update.notes,
             f"online RL: {seqs} sequences of {seq_len} tokens ({prompts} prompts x {num_generations} completions)",
             f"reference copy {ref_bytes} B, value model {value_bytes} B, rollout buffers {buffers} B, "
             f"generation KV cache + logits {rollout_peak} B (peak with the update's activations: the larger)")
    return replace(update, weights=update.weights + ref_bytes + value_bytes, total=int(total), notes=notes)
