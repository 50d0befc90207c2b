"""``OnlineRLObjective``: GRPO, RLOO and PPO as an objective of the shared training loop.

The loop collates every micro-batch of a step before any backward pass; here ``collate`` is the
rollout: it samples ``num_generations`` completions per prompt through the ``RolloutEngine``,
scores them, computes the advantages (and reference log-probs when a KL term is on), and returns
the tensors the loss needs. ``units`` then tells the loop how trl normalises the loss (sequences,
tokens or micro-batches), so gradient accumulation and several workers give trl's loss. With one
policy update per rollout (trl's default ``num_iterations=1``) the sampling policy is the policy
itself: its log-probs are the current ones, detached.

Rollouts are seeded by (seed, step, worker, micro-batch): a run resumed from a checkpoint samples
exactly the completions the uninterrupted run sampled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from tuneforge.engine.rl.generation import RolloutEngine, SamplingParams
from tuneforge.engine.rl.losses import (
    gae,
    grpo_advantages,
    grpo_per_token_loss,
    ppo_policy_loss,
    ppo_value_loss,
    reduce_grpo_loss,
    rloo_advantages,
    rloo_sequence_loss,
)
from tuneforge.engine.rl.rewards import RewardModelScorer, combine, score_completions
from tuneforge.engine.spec import ObjectiveKind, RlLossType, RlSettings
from tuneforge.engine.train.loop import Batch, LossSum
from tuneforge.engine.train.objectives import Reference


def rollout_seed(seed: int, step: int, rank: int, micro_batch: int) -> int:
    """A sampling seed per (run seed, step, worker, micro-batch), stable across processes."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{micro_batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


VALUE_HEAD = "v_head"  # PPO's value head: a Linear(hidden, 1) submodule of the policy, saved with it


def add_value_head(model: torch.nn.Module) -> torch.nn.Module:
    """Give a causal LM PPO's value head (zero-initialised: the first values are 0), in place."""
    config: Any = model.config
    hidden = int(config.hidden_size)
    head = torch.nn.Linear(hidden, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    dtype = next(model.parameters()).dtype
    model.add_module(VALUE_HEAD, head.to(device=next(model.parameters()).device, dtype=dtype))
    return model


def completion_logps(
    model: torch.nn.Module, batch: Batch, temperature: float, *, values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs and entropies of the completion tokens (logits / temperature, as trl), and
    with ``values`` the value head's estimate at each completion token's position."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # left-padded prompts: positions as generation saw them
    width = batch["completion_ids"].size(1)
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, output_hidden_states=values)
    value = None
    if values:
        head = getattr(_unwrap(model), VALUE_HEAD)
        hidden = out.hidden_states[-1][:, -width - 1:-1, :]
        value = head(hidden.to(head.weight.dtype)).squeeze(-1).float()
    logits = out.logits[:, -width - 1:-1, :].float() / temperature
    logp_all = logits.log_softmax(-1)
    logps = logp_all.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy, value


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DeepSpeed's engine and DDP keep the model in .module
    return getattr(model, "module", model)


class OnlineRLObjective:
    """GRPO, RLOO or PPO on prompt rows ``{"prompt_ids", "answer", "prompt_text", "rows"}``.

    PPO (trl's former PPOTrainer, one update per rollout): the rollout's log-probs, values and
    reference log-probs give per-token rewards ``-beta * (logp - ref_logp)`` plus the score on the
    last token, GAE advantages (whitened) and returns; the loss is the clipped surrogate plus
    ``vf_coef`` x the clipped value loss, summed over completion tokens (units: tokens).

    Args:
        kind: GRPO, RLOO or PPO.
        rl: the spec's settings (beta and epsilon_high resolved).
        tokenizer: decodes completions for the reward functions.
        engine: where rollouts come from.
        policy: the unwrapped policy (no-grad forwards: reference log-probs with the adapter off).
        reference: the frozen reference (used when beta != 0).
        reward_model: scores prompt + completion texts, or None.
        seed, rank: seed the rollouts.
    """

    has_perplexity = False

    def __init__(self, kind: ObjectiveKind, rl: RlSettings, tokenizer: Any, engine: RolloutEngine,
                 policy: torch.nn.Module, reference: Reference | None, *, reward_model: RewardModelScorer | None = None,
                 seed: int = 0, rank: int = 0) -> None:
        self.name = kind.value
        self.kind = kind
        self.rl = rl
        self.tokenizer = tokenizer
        self.engine = engine
        self.policy = policy
        self.reference = reference
        self.reward_model = reward_model
        self.seed, self.rank = seed, rank
        self.beta = float(rl.beta or 0.0)
        self.eps_low, self.eps_high = rl.epsilon, float(rl.epsilon_high or rl.epsilon)
        self.pad_id = int(tokenizer.pad_token_id)
        self._step, self._micro = 0, 0

    def begin_step(self, step: int) -> None:
        """Called by the loop before the step's micro-batches are collated."""
        self._step, self._micro = step, 0

    # ----------------------------------------------------------------------------- rollout

    def collate(self, rows: Sequence[Any]) -> Batch:
        n, rl = self.rl.num_generations, self.rl
        params = SamplingParams(rl.max_new_tokens, rl.temperature, rl.top_p,
                                rollout_seed(self.seed, self._step, self.rank, self._micro))
        self._micro += 1
        prompts = [r["prompt_ids"] for r in rows]
        completions = self.engine.generate(prompts, n, params)
        device = next(self.policy.parameters()).device
        batch = {k: v.to(device) for k, v in self._tensors(prompts, [c.token_ids for c in completions], n).items()}
        texts = self.tokenizer.batch_decode([list(c.token_ids) for c in completions], skip_special_tokens=True)
        answers = [rows[c.prompt_index].get("answer") for c in completions]
        rewards, per_function = self._rewards(rows, completions, texts, answers)
        with torch.no_grad():
            if self.beta != 0.0:
                batch["ref_logps"] = self._reference_logps(batch)
            if self.kind is ObjectiveKind.RLOO and self.beta != 0.0:
                old, _, _ = completion_logps(self.policy, batch, rl.temperature)
                kl = ((old - batch["ref_logps"]) * batch["completion_mask"]).sum(-1)
                batch["seq_kl"] = kl
                rewards_for_adv = rewards - self.beta * kl.float().cpu()
            else:
                rewards_for_adv = rewards
        if self.kind is ObjectiveKind.PPO:
            self._ppo_targets(batch, rewards)
            group_std = torch.nan_to_num(rewards.view(-1, n)).std(dim=1)
        elif self.kind is ObjectiveKind.RLOO:
            batch["advantages"] = rloo_advantages(rewards_for_adv, n, normalize=rl.normalize_advantages)
            group_std = torch.nan_to_num(rewards.view(-1, n)).std(dim=1)
        else:
            batch["advantages"], group_std = grpo_advantages(rewards, n, rl.scale_rewards)
        batch["rewards"], batch["group_std"], batch["per_function"] = rewards, group_std, per_function
        batch["advantages"] = batch["advantages"].to(device)
        return batch

    @torch.no_grad()
    def _ppo_targets(self, batch: Batch, rewards: torch.Tensor) -> None:
        """PPO's per-token rewards (KL penalty on every token, the score on the last), GAE advantages
        (whitened over the micro-batch) and returns, from the rollout policy's log-probs and values."""
        rl, mask = self.rl, batch["completion_mask"]
        old, _, values = completion_logps(self.policy, batch, rl.temperature, values=True)
        assert values is not None
        per_token = torch.zeros_like(old)
        kl = old - batch["ref_logps"] if "ref_logps" in batch else torch.zeros_like(old)
        per_token -= self.beta * kl
        last = (mask.sum(-1) - 1).clamp(min=0)
        score = torch.nan_to_num(rewards.to(old.device), nan=0.0)
        per_token[torch.arange(old.size(0), device=old.device), last] += score
        adv, returns = gae(per_token * mask, values, mask, gamma=rl.gamma, lam=rl.lam)
        m = mask.to(adv.dtype)
        mean = (adv * m).sum() / m.sum().clamp(min=1.0)
        var = (((adv - mean) ** 2) * m).sum() / m.sum().clamp(min=1.0)
        batch["advantages"] = ((adv - mean) * torch.rsqrt(var + 1e-8)) * m
        batch.update(old_logps=old, old_values=values, returns=returns, seq_kl=(kl * mask).sum(-1))

    def _tensors(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], n: int) -> Batch:
        rows = [p for p in prompts for _ in range(n)]
        pw, cw = max(len(p) for p in rows), max(1, max(len(c) for c in completions))
        prompt_ids = torch.full((len(rows), pw), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt_ids)
        comp_ids = torch.full((len(rows), cw), self.pad_id, dtype=torch.long)
        comp_mask = torch.zeros_like(comp_ids)
        for i, (p, c) in enumerate(zip(rows, completions, strict=True)):
            prompt_ids[i, pw - len(p):], prompt_mask[i, pw - len(p):] = torch.tensor(p), 1
            if c:
                comp_ids[i, :len(c)], comp_mask[i, :len(c)] = torch.tensor(c), 1
        return {"input_ids": torch.cat([prompt_ids, comp_ids], 1), "attention_mask": torch.cat([prompt_mask, comp_mask], 1),
                "completion_ids": comp_ids, "completion_mask": comp_mask}

    def _rewards(self, rows: Sequence[Any], completions: Sequence[Any], texts: Sequence[str],
                 answers: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        fns = self.rl.rewards
        per_function = score_completions(fns, texts, answers)
        weights = [f.weight for f in fns]
        if self.reward_model is not None:
            scored = self.reward_model.score([rows[c.prompt_index]["prompt_text"] + t for c, t in zip(completions, texts, strict=True)])
            per_function = torch.cat([per_function, scored.unsqueeze(1)], dim=1)
            weights.append(self.rl.reward_model_weight)
        return combine(per_function, weights), per_function

    def _reference_logps(self, batch: Batch) -> torch.Tensor:
        assert self.reference is not None
        with self.reference.context():
            logps, _, _ = completion_logps(self.reference.model(self.policy), batch, self.rl.temperature)
        return logps

    # ------------------------------------------------------------------------------- loss

    def units(self, batch: Batch) -> int:
        if self.kind is ObjectiveKind.PPO:
            return int(batch["completion_mask"].sum())
        if self.kind is ObjectiveKind.RLOO:
            return batch["completion_ids"].size(0)
        lt = self.rl.loss_type
        if lt is RlLossType.DAPO:
            return int(batch["completion_mask"].sum())
        return 1 if lt is RlLossType.BNPO else batch["completion_ids"].size(0)

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        if self.kind is ObjectiveKind.PPO:
            return self._ppo_loss(model, batch)
        logps, entropy, _ = completion_logps(model, batch, self.rl.temperature)
        mask = batch["completion_mask"].to(logps.dtype)
        adv = batch["advantages"].to(logps.dtype)
        if self.kind is ObjectiveKind.RLOO:
            seq = (logps * mask).sum(1)
            per_seq, clipped = rloo_sequence_loss(seq, seq.detach(), adv, eps_low=self.eps_low, eps_high=self.eps_high)
            total = per_seq.sum()
            clip = (float(clipped.sum()), float(clipped.numel()))
            kl = batch.get("seq_kl")
            kl_mean = (float(kl.sum()), float(mask.sum())) if kl is not None else None
        else:
            per_token, extra = grpo_per_token_loss(logps, logps.detach(), adv, eps_low=self.eps_low,
                                                   eps_high=self.eps_high, beta=self.beta,
                                                   ref_logps=batch.get("ref_logps"))
            total, _units = reduce_grpo_loss(per_token, mask, self.rl.loss_type, self.rl.max_new_tokens)
            clip = (float((extra["clipped"] * mask).sum()), float(mask.sum()))
            kl_mean = (float((extra["kl"] * mask).sum()), float(mask.sum())) if "kl" in extra else None
        return LossSum(total, means=self._means(batch, entropy.detach(), mask, clip, kl_mean))

    def _ppo_loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        """Clipped surrogate + vf_coef x clipped value loss, summed over completion tokens."""
        logps, entropy, values = completion_logps(model, batch, self.rl.temperature, values=True)
        assert values is not None
        mask = batch["completion_mask"].to(logps.dtype)
        pg = ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], eps=self.eps_low)
        vf = ppo_value_loss(values, batch["old_values"], batch["returns"], clip=self.rl.cliprange_value)
        total = ((pg + self.rl.vf_coef * vf) * mask).sum()
        ratio = torch.exp(logps.detach() - batch["old_logps"])
        clipped = ((ratio - 1).abs() > self.eps_low).float()
        tokens = float(mask.sum())
        means = self._means(batch, entropy.detach(), mask, (float((clipped * mask).sum()), tokens),
                            (float(batch["seq_kl"].sum()), tokens))
        means["value_loss"] = (float((vf.detach() * mask).sum()), tokens)
        return LossSum(total, means=means)

    def _means(self, batch: Batch, entropy: torch.Tensor, mask: torch.Tensor, clip: tuple[float, float],
               kl: tuple[float, float] | None) -> dict[str, tuple[float, float]]:
        rewards = batch["rewards"]
        scored = ~torch.isnan(rewards)
        tokens = float(mask.sum())
        out = {
            "reward": (float(rewards[scored].sum()), float(scored.sum())),
            "reward_std": (float(batch["group_std"].nan_to_num().sum()), float(batch["group_std"].numel())),
            "entropy": (float((entropy * mask).sum()), tokens),
            "clip_ratio": clip,
            "completion_length": (tokens, float(mask.size(0))),
        }
        per_function = batch["per_function"]
        names = [f.name.value for f in self.rl.rewards] + (["reward_model"] if per_function.size(1) > len(self.rl.rewards) else [])
        for j, name in enumerate(names):
            col = per_function[:, j]
            ok = ~torch.isnan(col)
            out[f"rewards/{name}"] = (float(col[ok].sum()), float(ok.sum()))
        if kl is not None:
            out["kl"] = kl
        return out  # the same keys on every worker and micro-batch: the loop all-reduces them in order
