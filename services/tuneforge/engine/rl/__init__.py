"""Online reinforcement learning: rollouts, rewards, advantages and policy losses (GRPO, RLOO, PPO).

Public API:
    generation: ``RolloutEngine`` (the one generation interface: ``generate(prompts, n, params)``),
        ``SamplingParams``, ``Completion``, ``HFRolloutEngine`` (the engine's batched HF generation).
    rewards: built-in verifiable rewards chosen by name (``score_completions``) and a reward-model scorer.
    losses: GRPO/RLOO advantages and per-token losses (trl 1.16's formulas), PPO's GAE, clipped
        surrogate and clipped value loss.
    objective: ``OnlineRLObjective``, the loop's objective whose ``collate`` runs the rollouts;
        ``add_value_head`` gives the policy PPO's value head.
"""
