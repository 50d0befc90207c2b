"""Online RL losses against trl 1.16 on fixed batches, and PPO's pieces against plain loops.

GRPO and RLOO: trl's own ``GRPOTrainer._compute_loss`` / ``RLOOTrainer._compute_loss`` run on the
same tensors (a trainer object made without ``__init__``, holding only the attributes the loss
reads; the policy's per-token log-probs are handed in through ``_get_per_token_logps_and_entropies``).
Advantages: trl's formulas (``_generate_and_score_completions``), written out here on the same rewards.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

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
from tuneforge.engine.spec import RewardScaling, RlLossType

trl = pytest.importorskip("trl")

B, T, MAX_NEW = 6, 5, 7


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    for i, n in enumerate([5, 3, 1, 4, 5, 2]):
        mask[i, n:] = 0
    old = -torch.rand(B, T, generator=g) * 3
    return {
        "logps": old + torch.randn(B, T, generator=g) * 0.3,  # off-policy enough that clipping bites
        "old": old,
        "ref": old + torch.randn(B, T, generator=g) * 0.2,
        "adv": torch.randn(B, generator=g),
        "mask": mask,
    }


class _Accel:
    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_grpo(loss_type: str, beta: float, eps_low: float, eps_high: float, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from trl import GRPOTrainer

    t = GRPOTrainer.__new__(GRPOTrainer)
    logps = b["logps"].clone().requires_grad_(True)
    t.__dict__.update(
        top_entropy_quantile=1.0, aux_loss_enabled=False, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps_low,
        epsilon_high=eps_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=MAX_NEW, accelerator=_Accel(), _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": b["mask"],
              "advantages": b["adv"], "old_per_token_logps": b["old"], "ref_per_token_logps": b["ref"],
              "num_items_in_batch": b["mask"].sum()}
    return t._compute_loss(None, inputs)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize(("beta", "eps_high"), [(0.0, 0.2), (0.04, 0.28)])
def test_grpo_loss_equals_trl(loss_type: str, beta: float, eps_high: float) -> None:
    b = _batch()
    want = _trl_grpo(loss_type, beta, 0.2, eps_high, b)
    per_token, extra = grpo_per_token_loss(b["logps"], b["old"], b["adv"], eps_low=0.2, eps_high=eps_high,
                                           beta=beta, ref_logps=b["ref"])
    total, units = reduce_grpo_loss(per_token, b["mask"], RlLossType(loss_type), MAX_NEW)
    assert float(total.detach() / units) == pytest.approx(float(want.detach()), rel=1e-6, abs=1e-7)
    assert 0 < float((extra["clipped"] * b["mask"]).sum()) < float(b["mask"].sum())  # clipping was exercised


def test_grpo_loss_over_micro_batches_equals_trl_on_the_whole_batch() -> None:
    # dapo normalises by the tokens of the whole step: two micro-batches summed and divided by the
    # loop's unit count give trl's loss on the full batch.
    # float64: the loss is a small difference of large sums, float32 would hide the comparison in rounding.
    b = {k: v.double() if v.is_floating_point() else v for k, v in _batch(1).items()}
    want = _trl_grpo("dapo", 0.04, 0.2, 0.2, b)
    totals, units = 0.0, 0.0
    for part in (slice(0, 2), slice(2, B)):
        per_token, _ = grpo_per_token_loss(b["logps"][part], b["old"][part], b["adv"][part], eps_low=0.2,
                                           eps_high=0.2, beta=0.04, ref_logps=b["ref"][part])
        total, u = reduce_grpo_loss(per_token, b["mask"][part], RlLossType.DAPO, MAX_NEW)
        totals, units = totals + float(total), units + u
    assert totals / units == pytest.approx(float(want.detach()), rel=1e-9)


def _trl_group_advantages(rewards: torch.Tensor, n: int, scale: str) -> torch.Tensor:
    # trl 1.16 GRPOTrainer._generate_and_score_completions, sum_then_normalize, written out.
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, n), dim=1).repeat_interleave(n)
    std = nanstd(rewards.view(-1, n), dim=1).repeat_interleave(n) if scale == "group" else nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_equal_trl(scale: str) -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0, 3.0, 3.0, math.nan])
    got, _ = grpo_advantages(rewards, 4, RewardScaling(scale))
    assert torch.allclose(got, _trl_group_advantages(rewards, 4, scale), atol=1e-6)


def test_rloo_advantages_and_loss_equal_trl() -> None:
    from trl import RLOOTrainer

    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0, 3.0])
    grouped = rewards.view(-1, 3)
    want_adv = rewards - ((grouped.sum(1, keepdim=True) - grouped) / 2).view(-1)
    adv = rloo_advantages(rewards, 3)
    assert torch.allclose(adv, want_adv)

    b = _batch(2)
    t = RLOOTrainer.__new__(RLOOTrainer)
    logps = b["logps"].clone().requires_grad_(True)
    t.__dict__.update(aux_loss_enabled=False, epsilon_low=0.2, epsilon_high=0.2, model=SimpleNamespace(training=True),
                      accelerator=_Accel(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    old_seq = (b["old"] * b["mask"]).sum(1)
    want = t._compute_loss(None, {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": b["mask"],
        "advantages": adv, "old_logps": old_seq})
    seq = (b["logps"] * b["mask"]).sum(1)
    per_seq, clipped = rloo_sequence_loss(seq, old_seq, adv, eps_low=0.2, eps_high=0.2)
    assert float(per_seq.sum() / B) == pytest.approx(float(want), rel=1e-6)
    assert 0 < float(clipped.sum()) < B


# ----------------------------------------------------------------------------------------- PPO


def _plain_gae(rewards, values, lengths, gamma, lam):
    adv = [[0.0] * len(r) for r in rewards]
    for i, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            nxt = values[i][t + 1] if t + 1 < n else 0.0
            delta = rewards[i][t] + gamma * nxt - values[i][t]
            last = delta + gamma * lam * last
            adv[i][t] = last
    return adv


def test_gae_equals_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    want = _plain_gae(rewards.tolist(), values.tolist(), lengths, 0.99, 0.95)
    for i, n in enumerate(lengths):
        for t in range(6):
            expect = want[i][t] if t < n else 0.0
            assert float(adv[i, t]) == pytest.approx(expect, abs=1e-5)
            assert float(ret[i, t]) == pytest.approx(expect + (float(values[i, t]) if t < n else 0.0), abs=1e-5)


def test_ppo_clipped_objective_and_value_loss_equal_plain_formulas() -> None:
    b = _batch(4)
    adv = torch.randn(B, T, generator=torch.Generator().manual_seed(5))
    got = ppo_policy_loss(b["logps"], b["old"], adv, eps=0.2)
    values, old_values, returns = b["logps"], b["old"], b["ref"]
    got_v = ppo_value_loss(values, old_values, returns, clip=0.2)
    for i in range(B):
        for t in range(T):
            r = math.exp(float(b["logps"][i, t] - b["old"][i, t]))
            a = float(adv[i, t])
            want = -min(r * a, min(max(r, 0.8), 1.2) * a)
            assert float(got[i, t]) == pytest.approx(want, rel=1e-5, abs=1e-6)
            v, ov, R = float(values[i, t]), float(old_values[i, t]), float(returns[i, t])
            vc = ov + min(max(v - ov, -0.2), 0.2)
            assert float(got_v[i, t]) == pytest.approx(0.5 * max((v - R) ** 2, (vc - R) ** 2), rel=1e-5, abs=1e-6)
