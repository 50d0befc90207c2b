"""Advantages and policy losses of online RL, on plain tensors.

GRPO and RLOO follow trl 1.16's ``GRPOTrainer`` / ``RLOOTrainer`` formulas (the tests compare them
with trl's own ``_compute_loss`` on the same tensors); PPO's pieces are the textbook ones (Schulman
et al. 2017; GAE: Schulman et al. 2016), as trl's former ``PPOTrainer`` computed them.

Each loss returns a (sum, units) pair instead of a mean: the training loop adds sums over
micro-batches and workers and divides by the units of the whole step, which is how trl's
normalisations come out the same with gradient accumulation and data parallelism.
"""

from __future__ import annotations

import torch

from tuneforge.engine.spec import RewardScaling, RlLossType

STD_EPS = 1e-4  # trl adds it to the std before dividing


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample standard deviation ignoring NaNs (trl's ``nanstd``, Bessel-corrected)."""
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    var = torch.nanmean((x - mean) ** 2, dim=dim)
    count = (~torch.isnan(x)).sum(dim=dim)
    return torch.sqrt(var * count / (count - 1))


def grpo_advantages(rewards: torch.Tensor, num_generations: int, scale: RewardScaling) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages (reward minus its group's mean, over the group's or batch's std).

    Args:
        rewards: (prompts * num_generations,), each prompt's completions side by side; NaN = unscored.

    Returns:
        The advantages (unscored completions get 0) and each group's reward std (for logging).
    """
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    group_std = nanstd(grouped, dim=1)
    if scale is RewardScaling.BATCH:
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = group_std.repeat_interleave(num_generations)
    adv = rewards - mean
    if scale is not RewardScaling.NONE:
        adv = adv / (std + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0), group_std


def rloo_advantages(rewards: torch.Tensor, num_generations: int, *, normalize: bool = False) -> torch.Tensor:
    """Leave-one-out advantages: each reward minus the mean of its group's other rewards (trl's RLOO).

    ``rewards`` already holds the KL penalty (``reward - beta * sum_t(logp - ref_logp)``).
    """
    grouped = rewards.view(-1, num_generations)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    baselines = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (counts - 1)
    adv = rewards - baselines.view(-1)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (nanstd(adv) + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0)


def grpo_per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """trl's GRPO per-token loss: -min(r A, clip(r, 1-eps_low, 1+eps_high) A) + beta * KL(k3).

    Args:
        logps, old_logps, ref_logps: (B, T) per-token log-probs of the policy (with grad), of the
            sampling policy, of the frozen reference.
        advantages: (B,) one per completion.

    Returns:
        The (B, T) loss and, for logging, the per-token KL, ratio and clipped masks.
    """
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    extra = {"ratio": ratio.detach()}
    if beta != 0.0:
        assert ref_logps is not None
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        loss = loss + beta * kl
        extra["kl"] = kl.detach()
    extra["clipped"] = (((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))).detach().float()
    return loss, extra


def reduce_grpo_loss(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: RlLossType, max_new_tokens: int
) -> tuple[torch.Tensor, float]:
    """The micro-batch's loss as (sum, units): the step's loss is sum over micro-batches / units.

    grpo: per-sequence token mean, units = sequences. bnpo: the micro-batch's token mean, units = 1.
    dr_grpo: token sum / max_new_tokens, units = sequences. dapo: token sum, units = tokens.
    """
    mask = mask.to(per_token.dtype)
    if loss_type is RlLossType.GRPO:
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum(), float(per_token.size(0))
    if loss_type is RlLossType.BNPO:
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0), 1.0
    if loss_type is RlLossType.DR_GRPO:
        return (per_token * mask).sum() / max_new_tokens, float(per_token.size(0))
    return (per_token * mask).sum(), float(mask.sum())


def rloo_sequence_loss(
    seq_logps: torch.Tensor, old_seq_logps: torch.Tensor, advantages: torch.Tensor, *, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """trl's RLOO loss per sequence, on sequence log-probs: -min(r A, clip(r) A), r = exp(logp - old)."""
    ratio = torch.exp(seq_logps - old_seq_logps)
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages)
    clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
    return loss, clipped.detach().float()


# ------------------------------------------------------------------------------------------ PPO


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each completion's tokens.

    Args:
        rewards, values: (B, T) per-token rewards and value estimates; mask: (B, T) 1 on real tokens
            (a completion's tokens come first, padding after).

    Returns:
        advantages and returns (advantages + values), zero on padding. The value after a
        completion's last token is 0 (the episode ends).
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, *, eps: float
                    ) -> torch.Tensor:
    """PPO's clipped surrogate per token: max(-A r, -A clip(r, 1-eps, 1+eps))."""
    ratio = torch.exp(logps - old_logps)
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - eps, 1 + eps))


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *, clip: float
                   ) -> torch.Tensor:
    """PPO's clipped value loss per token: 0.5 * max((v - R)^2, (old_v + clip(v - old_v, -c, c) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
